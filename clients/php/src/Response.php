<?php

declare(strict_types=1);

namespace Paydispatch;

use Paydispatch\Exception\Unavailable;

/** @internal An HTTP answer as the client needs it. */
final class Response
{
    /** @param array<string, string> $headers lower-case names */
    public function __construct(
        public readonly int $status,
        public readonly string $reason,
        public readonly array $headers,
        public readonly string $body,
    ) {
    }

    /**
     * The answer's JSON object. A success that is not one (an HTML page of a proxy in between,
     * a truncated body) is Unavailable `malformed_response`: the request may have taken effect,
     * so try again later with the same idempotency key.
     *
     * @return array<string, mixed>
     */
    public function json(): array
    {
        try {
            $data = json_decode($this->body, true, 512, JSON_THROW_ON_ERROR);
        } catch (\JsonException $e) {
            $data = null;
        }
        if (!is_array($data)) {
            $message = sprintf('HTTP %d with no JSON object: %.80s', $this->status, $this->body);
            throw new Unavailable($this->status, 'malformed_response', $message);
        }
        return $data;
    }
}
