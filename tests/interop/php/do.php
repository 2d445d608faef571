<?php
// One blocking call of the do* family.
//   php do.php HOST:PORT MODE FUNC WORKLOAD [UNIQUE] [TIMEOUT_MS]
// MODE: normal high low background highbg lowbg.
// Prints "RESULT <data>" (foreground success) or "HANDLE <handle>"
// (background), then "RC <name>" and "ELAPSED <ms>".

declare(strict_types=1);
require __DIR__ . '/common.php';

[$host, $port] = server_from_argv($argv);
[$mode, $func, $workload] = [$argv[2], $argv[3], $argv[4]];
$unique = ($argv[5] ?? '') === '' ? null : $argv[5];
$timeout = (int)($argv[6] ?? 0);

$client = new GearmanClient();
$client->addServer($host, $port);
if ($timeout > 0) {
    $client->setTimeout($timeout);
}
$methods = [
    'normal' => 'doNormal', 'high' => 'doHigh', 'low' => 'doLow',
    'background' => 'doBackground', 'highbg' => 'doHighBackground',
    'lowbg' => 'doLowBackground',
];
$method = $methods[$mode];
$background = str_ends_with($method, 'Background');

$t0 = now_ms();
// Leave the unique out entirely when none is given: libgearman then sends its own.
$value = $unique === null
    ? @$client->$method($func, $workload)
    : @$client->$method($func, $workload, $unique);
$elapsed = now_ms() - $t0;
$rc = $client->returnCode();
if ($rc === GEARMAN_SUCCESS) {
    say($background ? 'HANDLE' : 'RESULT', (string)$value);
} else {
    say('ERROR', $client->error());
}
say('RC', rc_name($rc));
say('ELAPSED', sprintf('%.0f', $elapsed));
