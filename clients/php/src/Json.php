<?php

declare(strict_types=1);

namespace Paydispatch;

/** @internal Reading the API's JSON values into PHP types. */
final class Json
{
    public static function time(mixed $value): \DateTimeImmutable
    {
        return new \DateTimeImmutable((string) $value);
    }

    public static function maybeTime(mixed $value): ?\DateTimeImmutable
    {
        return $value === null ? null : self::time($value);
    }

    public static function maybeString(mixed $value): ?string
    {
        return $value === null ? null : (string) $value;
    }
}
