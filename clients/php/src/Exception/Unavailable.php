<?php

declare(strict_types=1);

namespace Paydispatch\Exception;

/**
 * The API or its database could not be reached, even after retries: try again later, with the
 * same idempotency key. `httpStatus` is 0 (and `code` network_error) when no answer came.
 */
class Unavailable extends ApiError
{
}
