<?php
// A worker with a menu of behaviours, chosen by function name.
//   php worker.php HOST:PORT ID FUNC[,FUNC...] [MAX_JOBS]
// Prints "START <id> <handle> <unique> <workload>" when a job begins and
// "DONE <id> <handle>" just before returning from it.

declare(strict_types=1);
require __DIR__ . '/common.php';

[$host, $port] = server_from_argv($argv);
$id = $argv[2] ?? 'w';
$funcs = explode(',', $argv[3] ?? 'reverse');
$max_jobs = (int)($argv[4] ?? 0);

// Workload "<gate file>|<tag>": hold the job until the gate file exists.
function gate_of(string $workload): array
{
    $parts = explode('|', $workload, 2);
    return [$parts[0], $parts[1] ?? ''];
}

$behaviours = [
    'reverse' => fn (GearmanJob $job, string $id) => strrev($job->workload()),
    // The seed "Sum" task: JSON [from, to, gate file] -> sum of from..to,
    // answered once the gate file exists.
    'sum' => function (GearmanJob $job, string $id) {
        [$from, $to, $gate] = json_decode($job->workload(), true) + [0, 0, ''];
        if ($gate !== '' && !wait_for_file($gate)) {
            $job->sendFail();
            return null;
        }
        return (string)array_sum(range($from, $to));
    },
    'record' => fn (GearmanJob $job, string $id) => $job->workload(),
    'gated' => function (GearmanJob $job, string $id) {
        [$gate, $tag] = gate_of($job->workload());
        if (!wait_for_file($gate)) {
            $job->sendFail();
            return null;
        }
        return "$id:$tag";
    },
    // Workload "<n>": n status updates i/n, then a result.
    'progress' => function (GearmanJob $job, string $id) {
        $n = (int)$job->workload();
        for ($i = 1; $i <= $n; $i++) {
            $job->sendStatus($i, $n);
        }
        return "progress-done";
    },
    // Reports 2/5, then holds until the gate file exists.
    'progress_gated' => function (GearmanJob $job, string $id) {
        [$gate, $tag] = gate_of($job->workload());
        $job->sendStatus(2, 5);
        say('STATUS_SENT', $id, $job->handle());
        wait_for_file($gate);
        return "$id:$tag";
    },
    'chatty' => function (GearmanJob $job, string $id) {
        $job->sendData('part1');
        $job->sendWarning('warn1');
        $job->sendData('part2');
        return 'done';
    },
    'fail' => function (GearmanJob $job, string $id) {
        $job->sendFail();
        return null;
    },
    'exception' => function (GearmanJob $job, string $id) {
        $job->sendException('boom');
        return null;
    },
];

$worker = new GearmanWorker();
$worker->setId($id);
$worker->addServer($host, $port);
foreach ($funcs as $func) {
    if (!isset($behaviours[$func])) {
        fwrite(STDERR, "unknown behaviour $func\n");
        exit(2);
    }
    $fn = $behaviours[$func];
    $worker->addFunction($func, function (GearmanJob $job) use ($fn, $id) {
        say('START', $id, $job->handle(), $job->unique(), $job->workload());
        $result = $fn($job, $id);
        say('DONE', $id, $job->handle());
        return $result;
    });
}
say('READY', $id);

$done = 0;
while ($max_jobs === 0 || $done < $max_jobs) {
    if (!@$worker->work()) {
        say('WORKER_ERROR', rc_name($worker->returnCode()), $worker->error());
        exit(1);
    }
    $done++;
}
say('EXIT', $id, (string)$done);
