<?php

declare(strict_types=1);

namespace Paydispatch;

/** An enabled payment system and what it can do (GET /v1/adapters). */
final class AdapterInfo
{
    /** @param list<string> $currencies empty: any currency */
    public function __construct(
        public readonly string $name,
        public readonly array $currencies,
        public readonly bool $cancel,
        public readonly bool $notifications,
        public readonly bool $signedNotifications,
        public readonly int $defaultExpirySeconds,
    ) {
    }

    /** @param array<string, mixed> $data */
    public static function fromArray(array $data): self
    {
        return new self(
            (string) $data['name'],
            array_values(array_map('strval', $data['currencies'])),
            (bool) $data['cancel'],
            (bool) $data['notifications'],
            (bool) $data['signed_notifications'],
            (int) $data['default_expiry_seconds'],
        );
    }
}
