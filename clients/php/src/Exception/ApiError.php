<?php

declare(strict_types=1);

namespace Paydispatch\Exception;

/**
 * An error answer of the API, or the network failing after the last retry.
 *
 *     ApiError
 *     ├── InvalidRequest   422: `field` names the culprit; nothing was written
 *     ├── Unauthorized     401: missing, unknown or revoked key
 *     ├── NotFound         404: no such order or wallet (or not this site's)
 *     ├── Conflict         409: not_cancellable, insufficient_funds, conflict
 *     │   └── KeyConflict  409 idempotency_conflict: key or site_ref reused with another body
 *     ├── BadRequest       400, 413 and other refusals (429 after the last retry)
 *     └── Unavailable      5xx or network errors after the last retry: try again later
 *
 * The same tree as the Python client (orders.client). `code` is the API's stable error code
 * (docs/api.md), a string, as PDOException's is; `httpStatus` is 0 when no answer came.
 */
class ApiError extends \RuntimeException implements PaydispatchException
{
    /** @var string the stable error code, e.g. "order_not_found" */
    public $code = '';

    /** @var string the API's human-readable message */
    public $message = '';

    /**
     * @param list<array{code?: string, field?: string, message?: string}> $details one entry
     *        per problem of a validation error, as the API sends them
     */
    public function __construct(
        public readonly int $httpStatus,
        string $code,
        string $message,
        public readonly string $field = '',
        public readonly array $details = [],
        ?\Throwable $previous = null,
    ) {
        parent::__construct($message, 0, $previous);
        $this->code = $code;
        $this->message = $message;
    }

    /** The exception for an error answer: its class by HTTP status, as the Python client does. */
    public static function fromResponse(int $status, string $body, string $reason = ''): self
    {
        $code = 'http_error';
        $message = $reason !== '' ? $reason : "HTTP $status";
        $field = '';
        $details = [];
        $decoded = json_decode($body, true);
        $error = is_array($decoded) ? ($decoded['error'] ?? null) : null;
        if (is_array($error) && isset($error['code'], $error['message'])) {
            $code = (string) $error['code'];
            $message = (string) $error['message'];
            $field = is_string($error['field'] ?? null) ? $error['field'] : '';
            $details = is_array($error['details'] ?? null) ? array_values($error['details']) : [];
        }
        $kind = match (true) {
            $status === 422 => InvalidRequest::class,
            $status === 401 => Unauthorized::class,
            $status === 404 => NotFound::class,
            $status === 409 && $code === 'idempotency_conflict' => KeyConflict::class,
            $status === 409 => Conflict::class,
            $status >= 500 => Unavailable::class,
            default => BadRequest::class,
        };
        return new $kind($status, $code, $message, $field, $details);
    }
}
