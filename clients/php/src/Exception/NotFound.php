<?php

declare(strict_types=1);

namespace Paydispatch\Exception;

/** 404: no such order or wallet, or not this site's (the API does not tell them apart). */
class NotFound extends ApiError
{
}
