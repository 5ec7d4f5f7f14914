<?php

declare(strict_types=1);

namespace Paydispatch\Exception;

/** 422: the API refused the input (`field` names the culprit); nothing was written. */
class InvalidRequest extends ApiError
{
}
