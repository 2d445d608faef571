<?php
// GearmanClient::ping (ECHO_REQ).  php ping.php HOST:PORT DATA
declare(strict_types=1);
require __DIR__ . '/common.php';

[$host, $port] = server_from_argv($argv);
$client = new GearmanClient();
$client->addServer($host, $port);
$ok = $client->ping($argv[2] ?? 'ping');
say('PING', $ok ? 'true' : 'false');
say('RC', rc_name($client->returnCode()));
