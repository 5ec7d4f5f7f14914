<?php

declare(strict_types=1);

// A user's wallet: balances, entries page by page, debits with replays and refusals.
// PD_URL, PD_KEY; PD_USER: a user the test credited 5.00 USD, then 2.50 USD, then 1.00 EUR.

require __DIR__ . '/bootstrap.php';

use Paydispatch\Client;
use Paydispatch\Exception\Conflict;
use Paydispatch\WalletBalance;
use Paydispatch\WalletEntry;

$pd = new Client(env('PD_URL'), env('PD_KEY'), retries: 1);
$user = env('PD_USER');

$balances = [];
foreach ($pd->walletBalance($user) as $balance) {
    check($balance instanceof WalletBalance, 'a WalletBalance');
    check($balance->held === 0 && !$balance->overdrawn, 'nothing held, not overdrawn');
    same($balance->amount, $balance->available, 'all of it available');
    $balances[$balance->currency] = $balance->amount;
}
ksort($balances);
same(['EUR' => 100, 'USD' => 750], $balances, 'balances');
same([], $pd->walletBalance('nobody-' . bin2hex(random_bytes(4))), 'no wallet yet');

$first = $pd->walletEntries($user, limit: 2);
same(2, count($first->items), 'a page of 2');
check($first->nextCursor !== null, 'a cursor after a full page');
$second = $pd->walletEntries($user, limit: 2, cursor: $first->nextCursor);
same(1, count($second->items), 'the last page');
same(null, $second->nextCursor, 'no cursor after the last page');
$entries = [...$first->items, ...$second->items];
same([100, 250, 500], array_map(fn (WalletEntry $e) => $e->amount, $entries), 'newest first');
same([100, 750, 500], array_map(fn (WalletEntry $e) => $e->balanceAfter, $entries), 'balances after');
same(['php-credit-3', 'php-credit-2', 'php-credit-1'], array_map(fn (WalletEntry $e) => $e->key, $entries), 'keys');

$euros = $pd->walletEntries($user, currency: 'EUR');
same([[100, 'EUR']], array_map(fn (WalletEntry $e) => [$e->amount, $e->currency], $euros->items), 'filtered by currency');

$debit = $pd->debit($user, 200, 'USD', key: 'php-debit-1', description: 'Pro plan');
same([-200, 550, 'debit', false], [$debit->amount, $debit->balanceAfter, $debit->kind, $debit->replayed], 'debit');
$replay = $pd->debit($user, 200, 'USD', key: 'php-debit-1', description: 'Pro plan');
same([$debit->id, true], [$replay->id, $replay->replayed], 'a replayed debit');

$e = throws(Conflict::class, fn () => $pd->debit($user, 100_000, 'USD', key: 'php-debit-2'), 'an overdraft');
same([409, 'insufficient_funds'], [$e->httpStatus, $e->code], 'overdraft');

report(['debit' => $debit->id]);
