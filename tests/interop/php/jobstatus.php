<?php
// jobStatus / jobStatusByUniqueKey, polled until the answer is EXPECT (or 10 s).
//   php jobstatus.php HOST:PORT handle|unique KEY [EXPECT]
// EXPECT looks like "1 1 2 5" (known running numerator denominator).
// Prints "STATUS <known> <running> <num> <den>" for the last answer.

declare(strict_types=1);
require __DIR__ . '/common.php';

[$host, $port] = server_from_argv($argv);
[$kind, $key] = [$argv[2], $argv[3]];
$expect = $argv[4] ?? null;

$client = new GearmanClient();
$client->addServer($host, $port);
$end = microtime(true) + 10.0;
do {
    $s = $kind === 'unique' ? $client->jobStatusByUniqueKey($key) : $client->jobStatus($key);
    $line = sprintf('%d %d %d %d', (int)$s[0], (int)$s[1], $s[2], $s[3]);
    if ($expect === null || $line === $expect) {
        break;
    }
    usleep(20000);
} while (microtime(true) < $end);
say('STATUS', $line);
