<?php

declare(strict_types=1);

// A site's webhook endpoint as clients/php/README.md shows it, for `php -S`: the raw body and
// the Paydispatch-Signature header verified with the secrets in PD_SECRETS (comma-separated);
// 200 with the event's id, or 400. With PD_SEEN set, the id of each event it accepts is
// appended to that file (delivery is at least once: a site keeps the ids it has seen).

require __DIR__ . '/../autoload.php';

use Paydispatch\Exception\InvalidSignature;
use Paydispatch\Webhook;

header('Content-Type: application/json');
$body = (string) file_get_contents('php://input');
try {
    $secrets = explode(',', (string) getenv('PD_SECRETS'));
    $event = Webhook::verify($body, $_SERVER['HTTP_PAYDISPATCH_SIGNATURE'] ?? null, $secrets);
} catch (InvalidSignature $e) {
    http_response_code(400);
    echo json_encode(['error' => $e->getMessage()]);
    exit;
}
$seen = getenv('PD_SEEN');
if (is_string($seen) && $seen !== '') {
    file_put_contents($seen, $event['id'] . "\n", FILE_APPEND | LOCK_EX);
}
http_response_code(200);
echo json_encode(['id' => $event['id'], 'user_id' => $event['data']['user_id'] ?? null]);
