<?php

declare(strict_types=1);

// Error answers become the typed exceptions. PD_URL, PD_KEY; PD_PAID: a paid order of the
// key's site; PD_DEAD_URL: an address where nothing listens.

require __DIR__ . '/bootstrap.php';

use Paydispatch\Client;
use Paydispatch\Exception\ApiError;
use Paydispatch\Exception\BadRequest;
use Paydispatch\Exception\Conflict;
use Paydispatch\Exception\InvalidRequest;
use Paydispatch\Exception\KeyConflict;
use Paydispatch\Exception\NotFound;
use Paydispatch\Exception\PaydispatchException;
use Paydispatch\Exception\Unauthorized;
use Paydispatch\Exception\Unavailable;

$pd = new Client(env('PD_URL'), env('PD_KEY'), retries: 1);
$outcome = [];

$create = fn (int $amount, string $currency, string $adapter) => $pd->createOrder(
    userId: '42', amount: $amount, currency: $currency, adapter: $adapter,
);

$e = throws(InvalidRequest::class, fn () => $create(5, 'USD', 'nowhere'), 'an unknown adapter');
same([422, 'adapter'], [$e->httpStatus, $e->field], 'unknown adapter');
$outcome['adapter'] = $e->code;

$e = throws(InvalidRequest::class, fn () => $create(5, 'XYZ', 'sandbox'), 'an unknown currency');
same(['unknown_currency', 'currency'], [$e->code, $e->field], 'unknown currency');

$e = throws(InvalidRequest::class, fn () => $create(0, 'USD', 'sandbox'), 'a zero amount');
same('amount', $e->field, 'zero amount');

$e = throws(NotFound::class, fn () => $pd->getOrder('00000000-0000-4000-8000-000000000000'), 'a missing order');
same([404, 'order_not_found'], [$e->httpStatus, $e->code], 'missing order');
check($e instanceof ApiError && $e instanceof PaydispatchException, 'NotFound is an ApiError');

$e = throws(Conflict::class, fn () => $pd->cancelOrder(env('PD_PAID')), 'cancelling a paid order');
check(!$e instanceof KeyConflict, 'not_cancellable is no key conflict');
same([409, 'not_cancellable'], [$e->httpStatus, $e->code], 'not cancellable');

$stranger = new Client(env('PD_URL'), 'pd_wrong', retries: 0);
$e = throws(Unauthorized::class, fn () => $stranger->listOrders(), 'a wrong key');
same([401, 'unauthorized'], [$e->httpStatus, $e->code], 'wrong key');

$e = throws(InvalidRequest::class, fn () => $pd->listOrders(cursor: 'not a cursor'), 'a bad cursor');
same('invalid_cursor', $e->code, 'bad cursor');

$e = throws(ApiError::class, fn () => $pd->debit('nobody', 100, 'USD', key: 'php-overdraw'), 'a debit from an empty wallet');
$outcome['empty_debit'] = [$e::class, $e->httpStatus, $e->code];

$dead = new Client(env('PD_DEAD_URL'), 'pd_any', retries: 1, backoff: 0.0);
$e = throws(Unavailable::class, fn () => $dead->listOrders(), 'nothing listening');
same([0, 'network_error'], [$e->httpStatus, $e->code], 'network error');
check(str_contains($e->getMessage(), 'GET '), 'the message names the request: ' . $e->getMessage());

$e = throws(BadRequest::class, fn () => $pd->getOrder(str_repeat('x', 70000)), 'a request line too long');
$outcome['huge'] = [$e->httpStatus, $e->code];

report($outcome);
