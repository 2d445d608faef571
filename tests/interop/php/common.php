<?php
// Helpers shared by the interop PHP scripts. Every script prints one fact per
// line ("KEY value ...") so the Python tests can match lines exactly.

declare(strict_types=1);

// "host:port" from argv[1].
function server_from_argv(array $argv): array
{
    if (!isset($argv[1]) || strpos($argv[1], ':') === false) {
        fwrite(STDERR, "usage: php {$argv[0]} HOST:PORT ...\n");
        exit(2);
    }
    [$host, $port] = explode(':', $argv[1], 2);
    return [$host, (int)$port];
}

// Symbolic name of a libgearman return code, e.g. "WORK_FAIL".
function rc_name(int $rc): string
{
    static $names = null;
    if ($names === null) {
        $names = [];
        foreach (['SUCCESS', 'IO_WAIT', 'WORK_DATA', 'WORK_WARNING', 'WORK_STATUS',
                  'WORK_EXCEPTION', 'WORK_FAIL', 'WORK_ERROR', 'TIMEOUT', 'QUEUE_ERROR',
                  'SERVER_ERROR', 'COULD_NOT_CONNECT', 'LOST_CONNECTION', 'NO_SERVERS',
                  'UNKNOWN_STATE', 'NO_JOBS', 'ERRNO', 'UNEXPECTED_PACKET',
                  'INVALID_MAGIC', 'INVALID_COMMAND', 'UNKNOWN_OPTION', 'JOB_QUEUE_FULL',
                  'ECHO_DATA_CORRUPTION', 'NOT_CONNECTED'] as $n) {
            if (defined("GEARMAN_$n")) {
                $names[constant("GEARMAN_$n")] ??= $n;
            }
        }
    }
    return $names[$rc] ?? "RC$rc";
}

function say(string ...$parts): void
{
    echo implode(' ', $parts), "\n";
}

function now_ms(): float
{
    return microtime(true) * 1000.0;
}

// Block until $path exists: lets a test hold a job "running" for exactly as
// long as it needs, instead of guessing a duration.
function wait_for_file(string $path, float $limit_s = 60.0): bool
{
    $end = microtime(true) + $limit_s;
    while (!file_exists($path)) {
        if (microtime(true) > $end) {
            return false;
        }
        usleep(5000);
    }
    return true;
}
