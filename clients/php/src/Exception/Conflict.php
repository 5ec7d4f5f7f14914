<?php

declare(strict_types=1);

namespace Paydispatch\Exception;

/**
 * 409: the request conflicts with the resource's state: not_cancellable, insufficient_funds,
 * conflict (the order changed meanwhile: read it again).
 */
class Conflict extends ApiError
{
}
