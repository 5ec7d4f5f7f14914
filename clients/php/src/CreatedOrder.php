<?php

declare(strict_types=1);

namespace Paydispatch;

/** What Client::createOrder() returns. */
final class CreatedOrder
{
    public function __construct(
        public readonly Order $order,
        /** False: an earlier request with the same key or site_ref made this order. */
        public readonly bool $created,
        /** The key the request carried on every attempt: store it to retry the create later. */
        public readonly string $idempotencyKey,
    ) {
    }
}
