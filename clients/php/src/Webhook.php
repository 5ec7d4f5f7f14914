<?php

declare(strict_types=1);

namespace Paydispatch;

use Paydispatch\Exception\InvalidSignature;

/**
 * Checking paydispatch's billing webhooks (docs/billing.md), as dispatcher.billing.receiver does:
 *
 *     $event = Webhook::verify(file_get_contents('php://input'),
 *                              $_SERVER['HTTP_PAYDISPATCH_SIGNATURE'] ?? null, [$secret]);
 *
 * The header is `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`, possibly with
 * several `v1` values. Only the raw bytes as received verify: never re-encode the body first.
 */
final class Webhook
{
    public const HEADER = 'Paydispatch-Signature';

    /** Seconds a signature stays good: older (or future) ones are refused as replays. */
    public const TOLERANCE = 300;

    /**
     * The event, if `$header` signs `$rawBody` with one of `$secrets` within `$tolerance`
     * seconds of `$now`; else InvalidSignature.
     *
     * Several secrets let a site rotate its secret without losing events: accept the new and
     * the old one until every event signed with the old one has been delivered.
     *
     * @param string|list<string> $secrets
     * @param int|float|null $now unix seconds; default: the current time
     * @return array<string, mixed> the decoded event: store `id`, ignore ids you have seen
     * @throws InvalidSignature
     */
    public static function verify(
        string $rawBody,
        ?string $header,
        #[\SensitiveParameter] string|array $secrets,
        int $tolerance = self::TOLERANCE,
        int|float|null $now = null,
    ): array {
        $secrets = is_array($secrets) ? array_values($secrets) : [$secrets];
        if ($secrets === [] || in_array('', $secrets, true)) {
            throw new \InvalidArgumentException('give at least one webhook secret, none empty');
        }
        if ($header === null || $header === '') {
            throw new InvalidSignature('no ' . self::HEADER . ' header');
        }
        $timestamp = null;
        $candidates = [];
        foreach (explode(',', $header) as $part) {
            [$key, $value] = array_pad(explode('=', trim($part), 2), 2, '');
            if ($key === 't' && preg_match('/^\d+$/', $value) === 1) {
                $timestamp = (int) $value;
            } elseif ($key === 'v1') {
                $candidates[] = $value;
            }
        }
        if ($timestamp === null || $candidates === []) {
            throw new InvalidSignature(self::HEADER . ' has no timestamp or no v1 signature');
        }
        $current = $now ?? microtime(true);
        if (abs($current - $timestamp) > $tolerance) {
            $away = sprintf('%.0f', $current - $timestamp);
            throw new InvalidSignature(self::HEADER . " timestamp is {$away}s away from now");
        }
        if (!self::matches($rawBody, $timestamp, $secrets, $candidates)) {
            throw new InvalidSignature(self::HEADER . ' does not match the body');
        }
        $event = json_decode($rawBody, true);
        if (!is_array($event)) {
            // Signed, so ours, but not a JSON object: refuse it all the same.
            throw new InvalidSignature('signed body is not a JSON object');
        }
        return $event;
    }

    /**
     * The header value paydispatch sends for `$rawBody` (for a site's own tests): one `v1` per
     * secret, as paydispatch signs with the new and the previous secret during a rotation.
     *
     * @param string|list<string> $secrets
     */
    public static function sign(
        #[\SensitiveParameter] string|array $secrets,
        string $rawBody,
        ?int $timestamp = null,
    ): string {
        $secrets = is_array($secrets) ? $secrets : [$secrets];
        if ($secrets === []) {
            throw new \InvalidArgumentException('sign needs at least one secret');
        }
        $t = $timestamp ?? time();
        $header = "t=$t";
        foreach ($secrets as $secret) {
            $header .= ',v1=' . self::signature($secret, $t, $rawBody);
        }
        return $header;
    }

    /** Hex HMAC-SHA256 of "<timestamp>.<body>". */
    public static function signature(
        #[\SensitiveParameter] string $secret,
        int $timestamp,
        string $rawBody,
    ): string {
        return hash_hmac('sha256', $timestamp . '.' . $rawBody, $secret);
    }

    /**
     * @param list<string> $secrets
     * @param list<string> $candidates
     */
    private static function matches(
        string $rawBody,
        int $timestamp,
        array $secrets,
        array $candidates,
    ): bool {
        $found = false;
        foreach ($secrets as $secret) {
            $expected = self::signature($secret, $timestamp, $rawBody);
            foreach ($candidates as $candidate) {
                // Every pair is compared, so the time taken does not tell which one matched.
                $found = hash_equals($expected, $candidate) || $found;
            }
        }
        return $found;
    }
}
