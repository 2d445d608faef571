<?php
// addTask* + runTasks with every callback set; prints one line per event.
//   php tasks.php HOST:PORT [--no-exception-cb] SPEC...
// SPEC is "MODE|FUNC|WORKLOAD|UNIQUE" (UNIQUE may be empty), MODE one of
// normal high low background highbg lowbg. Task i is labelled "t<i>".
// Lines: CREATED/DATA/WARNING/STATUS/COMPLETE/FAIL/EXCEPTION <label> ...,
// then "RUN <true|false>", "RC <name>" and "ELAPSED <ms>".

declare(strict_types=1);
require __DIR__ . '/common.php';

[$host, $port] = server_from_argv($argv);
$specs = array_slice($argv, 2);
$exception_cb = true;
if (($specs[0] ?? '') === '--no-exception-cb') {
    $exception_cb = false;
    array_shift($specs);
}

$client = new GearmanClient();
$client->addServer($host, $port);

$label = fn ($context) => is_string($context) ? $context : '?';
$client->setCreatedCallback(function (GearmanTask $t, $ctx) use ($label) {
    say('CREATED', $label($ctx), (string)$t->jobHandle());
});
$client->setDataCallback(function (GearmanTask $t, $ctx) use ($label) {
    say('DATA', $label($ctx), (string)$t->data());
});
$client->setWarningCallback(function (GearmanTask $t, $ctx) use ($label) {
    say('WARNING', $label($ctx), (string)$t->data());
});
$client->setStatusCallback(function (GearmanTask $t, $ctx) use ($label) {
    say('STATUS', $label($ctx), $t->taskNumerator() . '/' . $t->taskDenominator());
});
$client->setCompleteCallback(function (GearmanTask $t, $ctx) use ($label) {
    say('COMPLETE', $label($ctx), (string)$t->data());
});
$client->setFailCallback(function (GearmanTask $t, $ctx) use ($label) {
    say('FAIL', $label($ctx));
});
if ($exception_cb) {
    $client->setExceptionCallback(function (GearmanTask $t, $ctx) use ($label) {
        say('EXCEPTION', $label($ctx), (string)$t->data());
    });
}

$methods = [
    'normal' => 'addTask', 'high' => 'addTaskHigh', 'low' => 'addTaskLow',
    'background' => 'addTaskBackground', 'highbg' => 'addTaskHighBackground',
    'lowbg' => 'addTaskLowBackground',
];
foreach ($specs as $i => $spec) {
    [$mode, $func, $workload, $unique] = explode('|', $spec, 4) + ['', '', '', ''];
    $method = $methods[$mode];
    if ($unique === '') {
        $client->$method($func, $workload, "t$i");
    } else {
        $client->$method($func, $workload, "t$i", $unique);
    }
}

$t0 = now_ms();
$ok = @$client->runTasks();
$elapsed = now_ms() - $t0;
say('RUN', $ok ? 'true' : 'false');
say('RC', rc_name($client->returnCode()));
say('ELAPSED', sprintf('%.0f', $elapsed));
