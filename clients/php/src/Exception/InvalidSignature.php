<?php

declare(strict_types=1);

namespace Paydispatch\Exception;

/**
 * A billing webhook whose Paydispatch-Signature is missing, malformed, stale or wrong (or whose
 * signed body is not a JSON object): answer it 400 and do not act on it.
 */
class InvalidSignature extends \RuntimeException implements PaydispatchException
{
}
