<?php

declare(strict_types=1);

namespace Paydispatch;

/** An order's status, as the API names it (DESIGN.md's state machine). */
enum OrderStatus: string
{
    case New = 'new';
    case Submitting = 'submitting';
    case AwaitingPayment = 'awaiting_payment';
    case Paid = 'paid';
    case Rejected = 'rejected';
    case Expired = 'expired';
    case Cancelled = 'cancelled';
    case Failed = 'failed';
    case NeedsReview = 'needs_review';

    /** True for the statuses an order does not leave on its own (late payments aside). */
    public function isFinal(): bool
    {
        return match ($this) {
            self::Paid, self::Rejected, self::Expired, self::Cancelled, self::Failed => true,
            default => false,
        };
    }
}
