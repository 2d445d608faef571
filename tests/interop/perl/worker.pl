#!/usr/bin/perl
# A Gearman::Worker with a menu of behaviours, chosen by function name.
#   perl worker.pl HOST:PORT ID FUNC[,FUNC...] [MAX_JOBS]
# Prints "START <id> <handle> <arg>" when a job begins and "EXIT <id> <n>"
# after MAX_JOBS jobs.
use strict;
use warnings;
use Gearman::Worker;
use Time::HiRes qw(usleep time);

$| = 1;
my ($server, $id, $funcs, $max_jobs) = @ARGV;
die "usage: $0 HOST:PORT ID FUNCS [MAX_JOBS]\n" unless $funcs;
$max_jobs ||= 0;

# Hold a job until the gate file exists (the test decides when it ends).
sub wait_for_file {
    my ($path) = @_;
    my $end = time + 60;
    until (-e $path) {
        return 0 if time > $end;
        usleep(5000);
    }
    return 1;
}

my %behaviour = (
    reverse => sub { scalar reverse $_[0]->arg },
    record  => sub { $_[0]->arg },
    # Arg "<n>": report i/n for i = 1..n, then answer.
    progress => sub {
        my $job = shift;
        my $n = $job->arg;
        $job->set_status($_, $n) for 1 .. $n;
        return "progress-done";
    },
    # Arg "<gate file>|<tag>": report 2/5, wait for the gate, answer "<id>:<tag>".
    gated => sub {
        my $job = shift;
        my ($gate, $tag) = split /\|/, $job->arg, 2;
        $job->set_status(2, 5);
        print "STATUS_SENT $id ", $job->handle, "\n";
        wait_for_file($gate) or return undef;
        return "$id:$tag";
    },
    # Returning undef makes Gearman::Worker send WORK_FAIL.
    fail => sub { return undef },
);

my $worker = Gearman::Worker->new(job_servers => [$server]);
for my $func (split /,/, $funcs) {
    my $code = $behaviour{$func} or die "unknown behaviour $func\n";
    $worker->register_function($func => sub {
        my $job = shift;
        print "START $id ", $job->handle, " ", $job->arg, "\n";
        return $code->($job);
    });
}
print "READY $id\n";

my $done = 0;
$worker->work(
    on_complete => sub { $done++ },
    on_fail     => sub { $done++ },
    stop_if     => sub { $max_jobs && $done >= $max_jobs },
);
print "EXIT $id $done\n";
