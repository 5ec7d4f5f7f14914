<?php

declare(strict_types=1);

/*
 * The harness of the PHP test scripts: no PHPUnit (it cannot be installed offline), just checks
 * that stop the script with exit status 1 and a message on stderr. tests/e2e/test_php_client.py
 * starts the API, runs these scripts with `php` and asserts on their exit status and output.
 */

error_reporting(E_ALL);
set_error_handler(static function (int $severity, string $message, string $file, int $line): bool {
    throw new ErrorException($message, 0, $severity, $file, $line);
});
set_exception_handler(static function (Throwable $e): void {
    fwrite(STDERR, sprintf("FAILED: %s: %s\n%s\n", $e::class, $e->getMessage(), $e->getTraceAsString()));
    exit(1);
});

// Composer's autoloader when the scripts run from an installed package, else the bundled one.
require is_file(__DIR__ . '/../vendor/autoload.php') ? __DIR__ . '/../vendor/autoload.php' : __DIR__ . '/../autoload.php';

final class CheckFailed extends RuntimeException
{
}

function check(bool $condition, string $what): void
{
    if (!$condition) {
        throw new CheckFailed($what);
    }
}

function same(mixed $expected, mixed $actual, string $what): void
{
    check($expected === $actual, sprintf('%s: expected %s, got %s', $what, var_export($expected, true), var_export($actual, true)));
}

/**
 * The exception `$fn` throws, which must be a `$class`.
 *
 * @template T of Throwable
 * @param class-string<T> $class
 * @return T
 */
function throws(string $class, callable $fn, string $what): Throwable
{
    try {
        $fn();
    } catch (Throwable $e) {
        check($e instanceof $class, sprintf('%s: expected %s, got %s: %s', $what, $class, $e::class, $e->getMessage()));
        return $e;
    }
    throw new CheckFailed("$what: expected $class, nothing was thrown");
}

function env(string $name): string
{
    $value = getenv($name);
    check(is_string($value) && $value !== '', "the environment variable $name is set");
    return $value;
}

/** Print what the pytest side checks against the database, then exit 0. */
function report(array $outcome): never
{
    echo json_encode($outcome, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES), "\n";
    exit(0);
}
