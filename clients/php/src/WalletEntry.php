<?php

declare(strict_types=1);

namespace Paydispatch;

/** One ledger entry of a wallet (append-only; docs/billing.md). */
final class WalletEntry
{
    public function __construct(
        public readonly int $id,
        /** Signed minor units: negative for debits and refunds. */
        public readonly int $amount,
        public readonly string $currency,
        public readonly int $balanceAfter,
        /** topup, adjustment, debit, cashback, referral or refund. */
        public readonly string $kind,
        public readonly ?string $orderId,
        public readonly ?string $key,
        public readonly string $description,
        public readonly \DateTimeImmutable $createdAt,
        /** True when Client::debit() got the entry an earlier request with its key made. */
        public readonly bool $replayed = false,
    ) {
    }

    /** @param array<string, mixed> $data */
    public static function fromArray(array $data, bool $replayed = false): self
    {
        return new self(
            (int) $data['id'],
            (int) $data['amount'],
            (string) $data['currency'],
            (int) $data['balance_after'],
            (string) $data['kind'],
            Json::maybeString($data['order_id']),
            Json::maybeString($data['key']),
            (string) $data['description'],
            Json::time($data['created_at']),
            $replayed,
        );
    }
}
