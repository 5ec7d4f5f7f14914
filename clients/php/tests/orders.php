<?php

declare(strict_types=1);

// Orders through the API: create (with replays by site_ref and by Idempotency-Key), get, list
// page by page, cancel. PD_URL: the API; PD_KEY: a key of a site with no orders yet.

require __DIR__ . '/bootstrap.php';

use Paydispatch\Client;
use Paydispatch\Exception\ApiError;
use Paydispatch\Exception\Conflict;
use Paydispatch\Exception\KeyConflict;
use Paydispatch\OrderStatus;

$url = env('PD_URL');
$pd = new Client($url, env('PD_KEY'), retries: 1);
check(!str_contains(print_r($pd, true), env('PD_KEY')), 'print_r() does not show the key');

$created = $pd->createOrder(
    userId: '42', amount: 1999, currency: 'EUR', adapter: 'sandbox', siteRef: 'P-1',
    description: 'Top-up', metadata: ['plan' => 'gold'], expiresIn: 900,
);
check($created->created, 'the first create makes the order');
$order = $created->order;
same(OrderStatus::New, $order->status, 'status');
same([1999, 'EUR', 'P-1', 'Top-up'], [$order->amount, $order->currency, $order->siteRef, $order->description], 'order');
same(['plan' => 'gold'], $order->metadata, 'metadata');
same("$url/pay/{$order->id}", $order->statusUrl, 'status_url');
check(str_starts_with($created->idempotencyKey, 'pdc-'), 'a generated idempotency key');
$expiresIn = $order->expiresAt->getTimestamp() - $order->createdAt->getTimestamp();
check(abs($expiresIn - 900) <= 1, "expires 900 s after creation, not $expiresIn");

$replay = $pd->createOrder(
    userId: '42', amount: 1999, currency: 'EUR', adapter: 'sandbox', siteRef: 'P-1',
    description: 'Top-up', metadata: ['plan' => 'gold'], expiresIn: 900,
);
same([false, $order->id], [$replay->created, $replay->order->id], 'a replay by site_ref');

$conflict = throws(KeyConflict::class, fn () => $pd->createOrder(
    userId: '43', amount: 1999, currency: 'EUR', adapter: 'sandbox', siteRef: 'P-1',
), 'site_ref reused with another body');
check($conflict instanceof Conflict && $conflict instanceof ApiError, 'KeyConflict is a Conflict');
same(['idempotency_conflict', 409, 'idempotency_conflict'], [$conflict->code, $conflict->httpStatus, $conflict->getCode()], 'conflict');

$keyed = $pd->createOrder(userId: '42', amount: 500, currency: 'USD', adapter: 'sandbox', idempotencyKey: 'php-key-1');
$again = $pd->createOrder(userId: '42', amount: 500, currency: 'USD', adapter: 'sandbox', idempotencyKey: 'php-key-1');
same([true, false, 'php-key-1'], [$keyed->created, $again->created, $again->idempotencyKey], 'a replay by key');
same($keyed->order->id, $again->order->id, 'the same order for the same key');
same([], $keyed->order->metadata, 'no metadata');

$fetched = $pd->getOrder($order->id);
same($order->id, $fetched->id, 'get');
same([OrderStatus::New], array_map(fn ($e) => $e->toStatus, $fetched->events), 'events');
same(null, $fetched->events[0]->fromStatus, 'the first event comes from nowhere');

for ($i = 0; $i < 3; $i++) {
    $pd->createOrder(userId: '7', amount: 100 + $i, currency: 'USD', adapter: 'sandbox');
}
$first = $pd->listOrders(limit: 2);
same(2, count($first->items), 'a page of 2');
check($first->nextCursor !== null, 'a cursor after a full page');
$second = $pd->listOrders(limit: 2, cursor: $first->nextCursor);
$ids = [];
foreach ($pd->iterOrders(limit: 2) as $listed) {
    $ids[] = $listed->id;
}
same(5, count(array_unique($ids)), 'every order, page after page');
same(array_map(fn ($o) => $o->id, [...$first->items, ...$second->items]), array_slice($ids, 0, 4), 'pages in order');
same($order->id, end($ids), 'newest first: the first order last');
same(3, count(iterator_to_array($pd->iterOrders(userId: '7'), false)), 'filtered by user');

$cancelled = $pd->cancelOrder($order->id);
same(OrderStatus::Cancelled, $cancelled->status, 'cancelled');
same(OrderStatus::Cancelled, $pd->cancelOrder($order->id)->status, 'cancelling again answers the order');
$listed = $pd->listOrders(status: OrderStatus::Cancelled);
same([$order->id], array_map(fn ($o) => $o->id, $listed->items), 'listed by status');
same(null, $listed->nextCursor, 'no cursor after the last page');

check(in_array('sandbox', array_map(fn ($a) => $a->name, $pd->adapters()), true), 'sandbox is enabled');

report(['cancelled' => $order->id, 'keyed' => $keyed->order->id, 'orders' => count($ids)]);
