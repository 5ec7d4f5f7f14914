<?php

declare(strict_types=1);

namespace Paydispatch\Exception;

/** 400, 413 or another refusal: the request cannot succeed as sent. */
class BadRequest extends ApiError
{
}
