<?php

declare(strict_types=1);

namespace Paydispatch;

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

    /** @return array<string, mixed> */
    public function json(): array
    {
        $data = json_decode($this->body, true, 512, JSON_THROW_ON_ERROR);
        if (!is_array($data)) {
            throw new \UnexpectedValueException('the API answered JSON that is not an object');
        }
        return $data;
    }
}
