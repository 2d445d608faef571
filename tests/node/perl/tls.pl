#!/usr/bin/perl
# Gearman::Client / Gearman::Worker 2.004 over TLS (use_ssl), one fact a line.
#   perl tls.pl HOST PORT CA_FILE worker FUNC N   -> REGISTERED, then DONE <arg> per job
#   perl tls.pl HOST PORT CA_FILE do FUNC ARG     -> RESULT <data> | NORESULT
# CERT_FILE/KEY_FILE in the environment add a client certificate.
use strict;
use warnings;
use Gearman::Client;
use Gearman::Worker;

$| = 1;
my ($host, $port, $ca, $mode, $func, $arg) = @ARGV;
die "usage: $0 HOST PORT CA_FILE MODE FUNC ARG\n" unless defined $arg;
my %js = (host => $host, port => $port, use_ssl => 1, ca_file => $ca,
          ($ENV{CERT_FILE} ? (cert_file => $ENV{CERT_FILE}, key_file => $ENV{KEY_FILE}) : ()),
          # Gearman::Objects gives a connect (and so the handshake) 1 s; a loaded
          # machine needs longer.
          socket_cb => sub { $_[0]->{Timeout} = 20 });

if ($mode eq 'worker') {
    my $worker = Gearman::Worker->new(job_servers => [\%js]);
    my $left = $arg;
    $worker->register_function($func => sub {
        my $a = $_[0]->arg;
        print "DONE $a\n";
        $left--;
        return scalar reverse $a;
    });
    print "REGISTERED\n";
    $worker->work(stop_if => sub { $left <= 0 });
}
elsif ($mode eq 'do') {
    my $client = Gearman::Client->new(job_servers => [\%js]);
    my $result = $client->do_task($func, $arg, { timeout => 30 });
    print defined $result ? "RESULT $$result\n" : "NORESULT\n";
    print "SSL_ERROR $IO::Socket::SSL::SSL_ERROR\n" if $IO::Socket::SSL::SSL_ERROR;
}
else {
    die "unknown mode $mode\n";
}
