<?php

declare(strict_types=1);

namespace Paydispatch;

/** One balance of a user's wallet. */
final class WalletBalance
{
    public function __construct(
        /** An ISO 4217 code, or "points" for the loyalty balance. */
        public readonly string $currency,
        /** Minor units (whole points). */
        public readonly int $amount,
        /** As the API formats it, e.g. "19.99 USD". */
        public readonly string $formatted,
        public readonly \DateTimeImmutable $updatedAt,
        /** What can be spent or withdrawn now, in minor units: the balance, or 0 below zero. */
        public readonly int $available = 0,
        /** Set aside by holds (withdrawals not yet paid out, refunds being sent), minor units. */
        public readonly int $held = 0,
        /** True while a refund has left the balance ($amount) below zero. */
        public readonly bool $overdrawn = false,
    ) {
    }

    /** @param array<string, mixed> $data */
    public static function fromArray(array $data): self
    {
        return new self(
            (string) $data['currency'],
            (int) $data['amount'],
            (string) $data['formatted'],
            Json::time($data['updated_at']),
            (int) ($data['available'] ?? max((int) $data['amount'], 0)),
            (int) ($data['held'] ?? 0),
            (bool) ($data['overdrawn'] ?? false),
        );
    }
}
