<?php

declare(strict_types=1);

namespace Paydispatch\Exception;

/** The API or its database could not be reached, even after retries: try again later (with the same idempotency key). */
class Unavailable extends ApiError
{
}
