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
        );
    }
}
