<?php

declare(strict_types=1);

namespace Paydispatch\Exception;

/** 409 idempotency_conflict: the Idempotency-Key or site_ref was used with another body. */
class KeyConflict extends Conflict
{
}
