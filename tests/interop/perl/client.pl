#!/usr/bin/perl
# Gearman::Client calls, one per invocation; prints one fact per line.
#   perl client.pl HOST:PORT do FUNC ARG [UNIQ]     -> STATUS n/d ..., RESULT x | FAIL
#   perl client.pl HOST:PORT bg FUNC ARG [UNIQ] [PRIORITY] -> HANDLE h
#   perl client.pl HOST:PORT set FUNC ARG...        -> COMPLETE <arg> <result> ..., WAITED
#   perl client.pl HOST:PORT status HANDLE [EXPECT] -> STATUS known running num den
#   perl client.pl HOST:PORT server_status          -> FUNC name total running workers ...
use strict;
use warnings;
use Gearman::Client;
use Time::HiRes qw(usleep time);

$| = 1;
my ($server, $mode, @args) = @ARGV;
die "usage: $0 HOST:PORT MODE ARGS...\n" unless $mode;
my $client = Gearman::Client->new(job_servers => [$server]);

if ($mode eq 'do') {
    my ($func, $arg, $uniq) = @args;
    my $result = $client->do_task($func, $arg, {
        (defined $uniq && length $uniq ? (uniq => $uniq) : ()),
        on_status => sub { print "STATUS $_[0]/$_[1]\n" },
        on_fail   => sub { print "FAIL\n" },
    });
    print defined $result ? "RESULT $$result\n" : "NORESULT\n";
}
elsif ($mode eq 'bg') {
    my ($func, $arg, $uniq, $priority) = @args;
    my $handle = $client->dispatch_background($func, $arg, {
        (defined $uniq && length $uniq ? (uniq => $uniq) : ()),
        ($priority ? (priority => $priority) : ()),
    });
    print "HANDLE ", (defined $handle ? $handle : 'undef'), "\n";
}
elsif ($mode eq 'set') {
    my ($func, @work) = @args;
    my $set = $client->new_task_set;
    for my $arg (@work) {
        $set->add_task($func, $arg, {
            on_complete => sub { print "COMPLETE $arg ${$_[0]}\n" },
            on_fail     => sub { print "FAIL $arg\n" },
        });
    }
    $set->wait(timeout => 30);
    print "WAITED\n";
}
elsif ($mode eq 'status') {
    my ($handle, $expect) = @args;
    my $line = 'none';
    my $end = time + 10;
    while (1) {
        my $st = $client->get_status($handle);
        $line = $st
            ? join(' ', map { defined $_ ? $_ : 'undef' }
                ($st->known, $st->running, @{$st->progress || [0, 0]}))
            : 'none';
        last if !defined $expect || $line eq $expect || time > $end;
        usleep(20000);
    }
    print "STATUS $line\n";
}
elsif ($mode eq 'server_status') {
    my $status = $client->get_job_server_status;
    for my $js (sort keys %$status) {
        for my $func (sort keys %{ $status->{$js} }) {
            my $s = $status->{$js}{$func};
            print "FUNC $func $s->{queued} $s->{running} $s->{capable}\n";
        }
    }
}
else {
    die "unknown mode $mode\n";
}
