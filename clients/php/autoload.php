<?php

declare(strict_types=1);

/*
 * For sites without Composer: `require 'path/to/clients/php/autoload.php';` loads the
 * Paydispatch\ classes from src/ by the same PSR-4 mapping composer.json declares.
 */

spl_autoload_register(static function (string $class): void {
    $prefix = 'Paydispatch\\';
    if (strncmp($class, $prefix, strlen($prefix)) !== 0) {
        return;
    }
    $file = __DIR__ . '/src/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
    if (is_file($file)) {
        require $file;
    }
});
