<?php

declare(strict_types=1);

namespace Paydispatch;

/** One status change of an order (GET /v1/orders/{id} lists them, oldest first). */
final class OrderEvent
{
    /** @param array<string, mixed> $detail */
    public function __construct(
        public readonly ?OrderStatus $fromStatus,
        public readonly OrderStatus $toStatus,
        public readonly \DateTimeImmutable $at,
        public readonly string $actor,
        public readonly array $detail,
    ) {
    }

    /** @param array<string, mixed> $data */
    public static function fromArray(array $data): self
    {
        return new self(
            $data['from_status'] === null ? null : OrderStatus::from($data['from_status']),
            OrderStatus::from($data['to_status']),
            Json::time($data['at']),
            (string) $data['actor'],
            (array) $data['detail'],
        );
    }
}
