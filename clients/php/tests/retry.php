<?php

declare(strict_types=1);

// One call through the test's faulty front of the API (PD_FRONT_URL), which the pytest side
// has told what to do with each request; argv[1] names the call, the output is its outcome.

require __DIR__ . '/bootstrap.php';

use Paydispatch\Client;
use Paydispatch\Exception\ApiError;

$retries = (int) (getenv('PD_RETRIES') ?: '3');
$timeout = (float) (getenv('PD_TIMEOUT') ?: '10');
$pd = new Client(env('PD_FRONT_URL'), env('PD_KEY'), timeout: $timeout, retries: $retries, backoff: 0.01, maxBackoff: 0.05);

try {
    $outcome = match ($argv[1] ?? '') {
        'create' => (function () use ($pd): array {
            $c = $pd->createOrder(userId: '9', amount: 300, currency: 'USD', adapter: 'sandbox');
            return ['order' => $c->order->id, 'created' => $c->created, 'key' => $c->idempotencyKey];
        })(),
        'get' => ['order' => $pd->getOrder(env('PD_ORDER'))->id],
        'cancel' => ['status' => $pd->cancelOrder(env('PD_ORDER'))->status->value],
        // A caller's key with a line break: refused before anything is sent.
        'inject' => (function () use ($pd): array {
            $injected = "k\r\nX-Injected: yes";
            $refused = [];
            foreach ([
                'create' => fn () => $pd->createOrder(
                    userId: '9', amount: 300, currency: 'USD', adapter: 'sandbox',
                    idempotencyKey: $injected,
                ),
                'debit' => fn () => $pd->debit('9', 100, 'USD', $injected),
                'client' => fn () => new Client(env('PD_FRONT_URL'), env('PD_KEY') . "\n"),
            ] as $call => $fn) {
                try {
                    $fn();
                    $refused[$call] = null;
                } catch (InvalidArgumentException $e) {
                    $refused[$call] = $e::class;
                }
            }
            return $refused;
        })(),
        default => throw new CheckFailed('name a call: create, get, cancel or inject'),
    };
} catch (ApiError $e) {
    $outcome = ['error' => $e::class, 'status' => $e->httpStatus, 'code' => $e->code];
}
report($outcome);
