<?php

declare(strict_types=1);

namespace Paydispatch\Exception;

/**
 * Every exception this library throws on purpose: `catch (PaydispatchException $e)` catches
 * them all (API answers, network failures after the last retry, bad webhook signatures).
 */
interface PaydispatchException extends \Throwable
{
}
