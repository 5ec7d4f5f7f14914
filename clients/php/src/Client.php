<?php

declare(strict_types=1);

namespace Paydispatch;

use Paydispatch\Exception\ApiError;
use Paydispatch\Exception\Unavailable;

/**
 * A client for the paydispatch HTTP API (docs/api.md), the PHP twin of the Python orders.client.
 *
 *     $pd = new Client('https://pay.example', getenv('PAYDISPATCH_KEY'));
 *     $created = $pd->createOrder(userId: '42', amount: 1999, currency: 'USD', adapter: 'sandbox');
 *     header('Location: ' . $created->order->statusUrl);
 *
 * Retries, as the Python client's: connection errors, timeouts, 429 and 5xx are tried again
 * (`$retries` more times) after an exponential backoff with full jitter that is never shorter
 * than the server's Retry-After. Only requests that are safe to repeat are retried: GET, DELETE
 * (cancelling a cancelled order answers it again) and POSTs that carry an Idempotency-Key, which
 * stays the same on every attempt of one call, so a create whose answer was lost is never made
 * twice. Error answers become exceptions of Paydispatch\Exception (see ApiError).
 */
final class Client
{
    public const USER_AGENT = 'paydispatch-client-php/1';

    /** The answers worth another try, as orders.client.RETRY_STATUSES. */
    public const RETRY_STATUSES = [429, 500, 502, 503, 504];

    private readonly string $baseUrl;

    /** @var list<string> */
    private readonly array $headers;

    private readonly \CurlHandle $curl;

    /**
     * @param float $timeout seconds for one attempt, from connecting to the last byte
     * @param int $retries attempts after the first for a transient failure (0: none)
     * @param float $backoff seconds: the first retry waits up to this, doubling after each
     * @param float $maxBackoff seconds: no wait is longer, whatever Retry-After says
     * @param float|null $connectTimeout seconds to connect; default: $timeout
     */
    public function __construct(
        string $baseUrl,
        #[\SensitiveParameter] string $apiKey,
        private readonly float $timeout = 10.0,
        private readonly int $retries = 3,
        private readonly float $backoff = 0.2,
        private readonly float $maxBackoff = 5.0,
        private readonly ?float $connectTimeout = null,
    ) {
        if ($apiKey === '') {
            throw new \InvalidArgumentException('an API key is required');
        }
        self::headerValue('the API key', $apiKey);
        if ($retries < 0 || $timeout <= 0 || $backoff < 0 || $maxBackoff < 0) {
            throw new \InvalidArgumentException(
                'timeout must be positive; retries and backoffs not negative'
            );
        }
        $this->baseUrl = rtrim($baseUrl, '/');
        $this->headers = [
            'Authorization: Bearer ' . $apiKey,
            'Accept: application/json',
            'User-Agent: ' . self::USER_AGENT,
        ];
        // One handle for the client's life: curl keeps the connection open between calls.
        $this->curl = curl_init();
    }

    /** What var_dump() and print_r() show: everything but the key. */
    public function __debugInfo(): array
    {
        return [
            'baseUrl' => $this->baseUrl,
            'timeout' => $this->timeout,
            'connectTimeout' => $this->connectTimeout ?? $this->timeout,
            'retries' => $this->retries,
            'backoff' => $this->backoff,
            'maxBackoff' => $this->maxBackoff,
        ];
    }

    /**
     * Create an order, or get the one an earlier identical request made.
     *
     * Every attempt of this call sends the same `$idempotencyKey` (a new random one unless
     * given; CreatedOrder::$idempotencyKey returns it), so an answer lost on the way back never
     * makes a second order. The same key with another body is a KeyConflict.
     *
     * @param int $amount minor units (cents; yen for JPY)
     * @param array<string, mixed> $metadata stored with the order, returned as given
     * @param int|null $expiresIn seconds until the order expires; default: the payment system's
     */
    public function createOrder(
        string $userId,
        int $amount,
        string $currency,
        string $adapter,
        ?string $siteRef = null,
        string $description = '',
        ?string $returnUrl = null,
        array $metadata = [],
        ?int $expiresIn = null,
        ?string $idempotencyKey = null,
    ): CreatedOrder {
        $key = $idempotencyKey ?? 'pdc-' . self::uuid4();
        $body = [
            'user_id' => $userId,
            'amount' => $amount,
            'currency' => $currency,
            'adapter' => $adapter,
            'description' => $description,
            // An empty PHP array would be encoded as a JSON list, which the API refuses.
            'metadata' => (object) $metadata,
        ];
        if ($siteRef !== null) {
            $body['site_ref'] = $siteRef;
        }
        if ($returnUrl !== null) {
            $body['return_url'] = $returnUrl;
        }
        if ($expiresIn !== null) {
            $body['expires_in'] = $expiresIn;
        }
        $response = $this->send('POST', '/v1/orders', body: $body, idempotencyKey: $key);
        $created = $response->status === 201;
        return new CreatedOrder(Order::fromArray($response->json()), $created, $key);
    }

    /** The order with its status history (Order::$events). */
    public function getOrder(string $orderId): Order
    {
        $response = $this->send('GET', '/v1/orders/' . rawurlencode($orderId));
        return Order::fromArray($response->json());
    }

    /**
     * Cancel a `new` or `awaiting_payment` order; a Conflict `not_cancellable` once it is past
     * that. Cancelling a cancelled order returns it again.
     */
    public function cancelOrder(string $orderId): Order
    {
        $response = $this->send('DELETE', '/v1/orders/' . rawurlencode($orderId));
        return Order::fromArray($response->json());
    }

    /** One page of the site's orders, newest first; pass `$page->nextCursor` for the next. */
    public function listOrders(
        OrderStatus|string|null $status = null,
        ?string $userId = null,
        ?string $adapter = null,
        int $limit = 50,
        ?string $cursor = null,
    ): OrderPage {
        $query = [
            'status' => $status instanceof OrderStatus ? $status->value : $status,
            'user_id' => $userId,
            'adapter' => $adapter,
            'limit' => $limit,
            'cursor' => $cursor,
        ];
        $data = $this->send('GET', '/v1/orders', query: $query)->json();
        return new OrderPage(
            array_map(Order::fromArray(...), array_values($data['items'])),
            Json::maybeString($data['next_cursor']),
        );
    }

    /**
     * Every order matching the filters, page after page (`$limit` per request).
     *
     * @return \Generator<int, Order>
     */
    public function iterOrders(
        OrderStatus|string|null $status = null,
        ?string $userId = null,
        ?string $adapter = null,
        int $limit = 50,
    ): \Generator {
        $cursor = null;
        do {
            $page = $this->listOrders($status, $userId, $adapter, $limit, $cursor);
            yield from $page->items;
            $cursor = $page->nextCursor;
        } while ($cursor !== null);
    }

    /** @return list<AdapterInfo> the enabled payment systems */
    public function adapters(): array
    {
        $data = $this->send('GET', '/v1/adapters')->json();
        return array_map(AdapterInfo::fromArray(...), array_values($data['items']));
    }

    /**
     * A user's balances, one per currency (and "points"); empty before the first credit.
     *
     * @return list<WalletBalance>
     */
    public function walletBalance(string $userId): array
    {
        $data = $this->send('GET', '/v1/wallets/' . rawurlencode($userId))->json();
        return array_map(WalletBalance::fromArray(...), array_values($data['balances']));
    }

    /** One page of a user's ledger entries, newest first; `$page->nextCursor` for the next. */
    public function walletEntries(
        string $userId,
        ?string $currency = null,
        int $limit = 50,
        ?string $cursor = null,
    ): EntryPage {
        $query = ['currency' => $currency, 'limit' => $limit, 'cursor' => $cursor];
        $path = '/v1/wallets/' . rawurlencode($userId) . '/entries';
        $data = $this->send('GET', $path, query: $query)->json();
        return new EntryPage(
            array_map(WalletEntry::fromArray(...), array_values($data['items'])),
            Json::maybeString($data['next_cursor']),
        );
    }

    /**
     * Take money from a user's balance: a Conflict `insufficient_funds` rather than overdraw.
     * The same `$key` and body return the first entry (WalletEntry::$replayed).
     *
     * @param int $amount minor units (whole points), positive
     */
    public function debit(
        string $userId,
        int $amount,
        string $currency,
        string $key,
        string $description = '',
    ): WalletEntry {
        $body = ['amount' => $amount, 'currency' => $currency, 'description' => $description];
        $path = '/v1/wallets/' . rawurlencode($userId) . '/debit';
        $response = $this->send('POST', $path, body: $body, idempotencyKey: $key);
        return WalletEntry::fromArray($response->json(), $response->status === 200);
    }

    /**
     * One request, tried again while the failure is transient and the request safe to repeat.
     *
     * @param array<string, mixed>|null $body
     * @param array<string, scalar|null> $query null values are left out
     */
    private function send(
        string $method,
        string $path,
        ?array $body = null,
        array $query = [],
        ?string $idempotencyKey = null,
    ): Response {
        $url = $this->baseUrl . $path;
        $query = array_filter($query, static fn ($v): bool => $v !== null);
        if ($query !== []) {
            $url .= '?' . http_build_query($query, '', '&', PHP_QUERY_RFC3986);
        }
        $headers = $this->headers;
        $payload = null;
        if ($body !== null) {
            $flags = JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE;
            $payload = json_encode($body, $flags);
            $headers[] = 'Content-Type: application/json';
            $headers[] = 'Expect:';  // no 100-continue round trip before a larger body
        }
        if ($idempotencyKey !== null) {
            $key = self::headerValue('the idempotency key', $idempotencyKey);
            $headers[] = 'Idempotency-Key: ' . $key;
        }
        $repeatable = $method !== 'POST' || $idempotencyKey !== null;
        $attempts = $repeatable ? $this->retries + 1 : 1;
        for ($attempt = 1; ; $attempt++) {
            [$response, $failure] = $this->attempt($method, $url, $headers, $payload);
            $transient = $response === null
                || in_array($response->status, self::RETRY_STATUSES, true);
            if ($transient && $attempt < $attempts) {
                usleep((int) round($this->wait($attempt, $response) * 1_000_000));
                continue;
            }
            if ($response === null) {
                throw new Unavailable(0, 'network_error', $failure);
            }
            if ($response->status >= 400) {
                throw ApiError::fromResponse($response->status, $response->body, $response->reason);
            }
            return $response;
        }
    }

    /**
     * `$value` if it can travel as a header value: printable ASCII only. curl sends header lines
     * as given, so a line break in a key (a caller's reference, a key file's trailing newline)
     * would end the header early and let the rest be read as headers of its own.
     */
    private static function headerValue(string $what, #[\SensitiveParameter] string $value): string
    {
        if (preg_match('/^[\x20-\x7e]*$/D', $value) !== 1) {
            throw new \InvalidArgumentException(
                "$what must be printable ASCII (no line breaks or other control characters)"
            );
        }
        return $value;
    }

    /**
     * @param list<string> $headers
     * @return array{0: ?Response, 1: string} the answer, or null and why none came
     */
    private function attempt(string $method, string $url, array $headers, ?string $payload): array
    {
        $received = [];
        $reason = '';
        curl_reset($this->curl);
        $options = [
            CURLOPT_URL => $url,
            CURLOPT_CUSTOMREQUEST => $method,
            CURLOPT_HTTPHEADER => $headers,
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_FOLLOWLOCATION => false,
            CURLOPT_NOSIGNAL => true,  // sub-second timeouts without SIGALRM
            CURLOPT_TIMEOUT_MS => (int) ceil($this->timeout * 1000),
            CURLOPT_CONNECTTIMEOUT_MS => (int) ceil(($this->connectTimeout ?? $this->timeout) * 1000),
            CURLOPT_HEADERFUNCTION => static function ($curl, string $line) use (&$received, &$reason) {
                if (preg_match('#^HTTP/\S+\s+\d{3}\s*(.*)$#', trim($line), $m) === 1) {
                    $received = [];  // a new status line (after 100 Continue): its own headers
                    $reason = $m[1];
                } elseif (str_contains($line, ':')) {
                    [$name, $value] = explode(':', $line, 2);
                    $received[strtolower(trim($name))] = trim($value);
                }
                return strlen($line);
            },
        ];
        if ($payload !== null) {
            $options[CURLOPT_POSTFIELDS] = $payload;
        }
        curl_setopt_array($this->curl, $options);
        $body = curl_exec($this->curl);
        if ($body === false) {
            return [null, sprintf('%s %s: %s', $method, $url, curl_error($this->curl))];
        }
        $status = (int) curl_getinfo($this->curl, CURLINFO_RESPONSE_CODE);
        return [new Response($status, $reason, $received, (string) $body), ''];
    }

    /** Seconds before attempt `$attempt + 1`: full jitter, at least Retry-After, at most the cap */
    private function wait(int $attempt, ?Response $response): float
    {
        $high = min($this->maxBackoff, $this->backoff * 2 ** ($attempt - 1));
        $wait = $high * mt_rand() / mt_getrandmax();
        $retryAfter = $response?->headers['retry-after'] ?? '';
        if (preg_match('/^\d+(\.\d+)?$/', $retryAfter) === 1) {
            $wait = max($wait, min((float) $retryAfter, $this->maxBackoff));
        }
        return $wait;
    }

    private static function uuid4(): string
    {
        $bytes = random_bytes(16);
        $bytes[6] = chr((ord($bytes[6]) & 0x0f) | 0x40);
        $bytes[8] = chr((ord($bytes[8]) & 0x3f) | 0x80);
        return vsprintf('%s%s-%s-%s-%s-%s%s%s', str_split(bin2hex($bytes), 4));
    }
}
