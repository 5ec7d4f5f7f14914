<?php

declare(strict_types=1);

namespace Paydispatch;

/** An order as the API shows it to its site. Amounts are integers of minor units (cents). */
final class Order
{
    /**
     * @param array<string, mixed> $metadata
     * @param list<OrderEvent> $events empty except from Client::getOrder()
     */
    public function __construct(
        public readonly string $id,
        public readonly int $number,
        public readonly ?string $siteRef,
        public readonly string $userId,
        public readonly int $amount,
        public readonly string $currency,
        public readonly string $adapter,
        public readonly string $description,
        public readonly ?string $returnUrl,
        public readonly array $metadata,
        public readonly OrderStatus $status,
        public readonly ?string $pspId,
        public readonly ?string $payUrl,
        /** The buyer's status page: send the buyer here. */
        public readonly string $statusUrl,
        public readonly \DateTimeImmutable $expiresAt,
        public readonly \DateTimeImmutable $createdAt,
        public readonly \DateTimeImmutable $updatedAt,
        public readonly ?\DateTimeImmutable $paidAt,
        public readonly ?string $lastError,
        public readonly array $events = [],
    ) {
    }

    /** @param array<string, mixed> $data an order object of the API */
    public static function fromArray(array $data): self
    {
        return new self(
            (string) $data['id'],
            (int) $data['number'],
            Json::maybeString($data['site_ref']),
            (string) $data['user_id'],
            (int) $data['amount'],
            (string) $data['currency'],
            (string) $data['adapter'],
            (string) $data['description'],
            Json::maybeString($data['return_url']),
            (array) $data['metadata'],
            OrderStatus::from($data['status']),
            Json::maybeString($data['psp_id']),
            Json::maybeString($data['pay_url']),
            (string) $data['status_url'],
            Json::time($data['expires_at']),
            Json::time($data['created_at']),
            Json::time($data['updated_at']),
            Json::maybeTime($data['paid_at']),
            Json::maybeString($data['last_error']),
            array_map(OrderEvent::fromArray(...), array_values($data['events'] ?? [])),
        );
    }
}
