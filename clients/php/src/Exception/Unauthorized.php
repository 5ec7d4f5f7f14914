<?php

declare(strict_types=1);

namespace Paydispatch\Exception;

/** 401: the API key is missing, unknown or revoked. */
class Unauthorized extends ApiError
{
}
