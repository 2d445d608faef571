<?php
// A GearmanWorker for the cluster tests: every test registers its own
// function names and maps each to a behaviour.
//   php worker.php HOST:PORT[,HOST:PORT...] ID FUNC=BEHAVIOUR[,FUNC=BEHAVIOUR...]
// Several servers are added in the order given, as libgearman users do.
// Behaviours: record (returns the workload), reverse, sum (the seed "Sum"
// task: JSON [from, to, sleep_ms] -> sum of from..to; sleep_ms defaults to
// $SUM_SLEEP_MS, so the seed's own client can drive it), gated (workload
// "<gate file>|<tag>": holds the job until the gate file exists, returns
// "<id>:<tag>").
// Prints "READY <id>", then per job "START <id> <handle> <unique> <workload>"
// and "DONE <id> <handle>" just before returning its result.

declare(strict_types=1);

function say(string ...$parts): void
{
    echo implode(' ', $parts), "\n";
}

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

if (count($argv) < 4 || strpos($argv[1], ':') === false) {
    fwrite(STDERR, "usage: php {$argv[0]} HOST:PORT ID FUNC=BEHAVIOUR[,...]\n");
    exit(2);
}
$id = $argv[2];

$behaviours = [
    'record' => fn (GearmanJob $job) => $job->workload(),
    'reverse' => fn (GearmanJob $job) => strrev($job->workload()),
    'sum' => function (GearmanJob $job) {
        [$from, $to, $sleep_ms] = json_decode($job->workload(), true)
            + [0, 0, (int)(getenv('SUM_SLEEP_MS') ?: 0)];
        usleep($sleep_ms * 1000);
        return (string)array_sum(range($from, $to));
    },
    'gated' => function (GearmanJob $job) use ($id) {
        [$gate, $tag] = explode('|', $job->workload(), 2) + ['', ''];
        if (!wait_for_file($gate)) {
            $job->sendFail();
            return null;
        }
        return "$id:$tag";
    },
];

$worker = new GearmanWorker();
$worker->setId($id);
foreach (explode(',', $argv[1]) as $server) {
    [$host, $port] = explode(':', $server, 2);
    $worker->addServer($host, (int)$port);
}
foreach (explode(',', $argv[3]) as $spec) {
    [$func, $behaviour] = explode('=', $spec, 2) + ['', ''];
    if (!isset($behaviours[$behaviour])) {
        fwrite(STDERR, "unknown behaviour in $spec\n");
        exit(2);
    }
    $fn = $behaviours[$behaviour];
    $worker->addFunction($func, function (GearmanJob $job) use ($fn, $id) {
        say('START', $id, $job->handle(), $job->unique(), $job->workload());
        $result = $fn($job);
        say('DONE', $id, $job->handle());
        return $result;
    });
}
say('READY', $id);

while (true) {
    if (!@$worker->work()) {
        say('WORKER_ERROR', (string)$worker->returnCode(), $worker->error());
        exit(1);
    }
}
