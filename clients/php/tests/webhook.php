<?php

declare(strict_types=1);

// Webhook::verify on the cases the pytest side signed with dispatcher.billing.receiver:
// argv[1] is a JSON file of {name: {body_b64, header, secrets, tolerance, now}}; the output is
// {name: "ok <event id>" | "invalid"}.

require __DIR__ . '/bootstrap.php';

use Paydispatch\Exception\InvalidSignature;
use Paydispatch\Exception\PaydispatchException;
use Paydispatch\Webhook;

$cases = json_decode((string) file_get_contents($argv[1] ?? ''), true, 512, JSON_THROW_ON_ERROR);
$outcome = [];
foreach ($cases as $name => $case) {
    $body = base64_decode($case['body_b64'], true);
    check(is_string($body), "$name: a base64 body");
    try {
        $event = Webhook::verify($body, $case['header'], $case['secrets'], $case['tolerance'], $case['now']);
        $outcome[$name] = 'ok ' . $event['id'];
    } catch (InvalidSignature $e) {
        check($e instanceof PaydispatchException, 'InvalidSignature is a PaydispatchException');
        $outcome[$name] = 'invalid';
    }
}

// What a site's own tests sign is what verify accepts, and what Python signs is what PHP signs.
$t = 1_700_000_000;
$header = Webhook::sign('s3cret', '{"id":"e-1"}', $t);
same(['id' => 'e-1'], Webhook::verify('{"id":"e-1"}', $header, 's3cret', now: $t), 'sign then verify');
$outcome['_php_signature'] = Webhook::signature('s3cret', $t, '{"id":"e-1"}');
$outcome['_php_rotation_header'] = Webhook::sign(['s3cret', 'old'], '{"id":"e-1"}', $t);

throws(InvalidArgumentException::class, fn () => Webhook::verify('{}', $header, []), 'no secret');
report($outcome);
