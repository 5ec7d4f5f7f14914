<?php

declare(strict_types=1);

// A site's webhook endpoint as clients/php/README.md shows it, for `php -S`: the raw body and
// the Paydispatch-Signature header verified with the secrets in PD_SECRETS (comma-separated);
// 200 with the event's id, or 400.

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
http_response_code(200);
echo json_encode(['id' => $event['id'], 'user_id' => $event['data']['user_id'] ?? null]);
