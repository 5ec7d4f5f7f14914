<?php

declare(strict_types=1);

namespace Paydispatch;

/** One page of Client::listOrders(), newest first. */
final class OrderPage
{
    /** @param list<Order> $items */
    public function __construct(
        public readonly array $items,
        /** Pass as `cursor:` for the next page; null on the last one. */
        public readonly ?string $nextCursor,
    ) {
    }
}
