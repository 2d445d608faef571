#!/usr/bin/perl
# Gearman::Client against several job servers at once (it hashes a task's
# uniq to pick the server). One call per invocation; prints one fact a line.
#   perl client.pl HOST:PORT[,HOST:PORT...] do FUNC ARG UNIQ
#       -> "SUBMITTED <server>//<handle>" ... "RESULT <x>" | "FAIL"
#   perl client.pl HOST:PORT[,...] set FUNC ARG...       (uniq = ARG)
#       -> "CREATED <arg> <server>//<handle>" per task as it is submitted,
#          "COMPLETE <arg> <result>" | "FAIL <arg>", then "WAITED"
use strict;
use warnings;
use Gearman::Client;

$| = 1;
my ($servers, $mode, @args) = @ARGV;
die "usage: $0 HOST:PORT[,...] MODE ARGS...\n" unless $mode;
my $client = Gearman::Client->new(job_servers => [split /,/, $servers]);

if ($mode eq 'do') {
    my ($func, $arg, $uniq) = @args;
    my $set = $client->new_task_set;
    my $result;
    my $handle = $set->add_task($func, $arg, {
        uniq        => $uniq,
        on_complete => sub { $result = ${ $_[0] } },
        on_fail     => sub { print "FAIL\n" },
    });
    print "SUBMITTED ", (defined $handle ? $handle : 'undef'), "\n";
    $set->wait(timeout => 60);
    print "RESULT $result\n" if defined $result;
}
elsif ($mode eq 'set') {
    my ($func, @work) = @args;
    my $set = $client->new_task_set;
    for my $arg (@work) {
        my $handle = $set->add_task($func, $arg, {
            uniq        => $arg,
            on_complete => sub { print "COMPLETE $arg ${$_[0]}\n" },
            on_fail     => sub { print "FAIL $arg\n" },
        });
        print "CREATED $arg ", (defined $handle ? $handle : 'undef'), "\n";
    }
    $set->wait(timeout => 60);
    print "WAITED\n";
}
else {
    die "unknown mode $mode\n";
}
