<?php

declare(strict_types=1);

namespace Paydispatch;

/** One page of Client::walletEntries(), newest first. */
final class EntryPage
{
    /** @param list<WalletEntry> $items */
    public function __construct(
        public readonly array $items,
        /** Pass as `cursor:` for the next page; null on the last one. */
        public readonly ?string $nextCursor,
    ) {
    }
}
