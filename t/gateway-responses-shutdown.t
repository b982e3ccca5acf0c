#!/usr/bin/perl

# Background responses that have no engine sequence yet when nginx is
# reloaded or stopped gracefully: one waiting for the engine (a single
# sequence at a time, taken by a long one) and one whose long input is
# still tokenized on the thread pool.  Each finishes in the old worker,
# which exits after it; with worker_shutdown_timeout it is cut instead,
# stored failed with an error saying why.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use POSIX qw(WNOHANG);
use Test::More;
use Time::HiRes qw(time sleep);
use KimiTest;

my $true = JSON::PP::true;
my $long = join(' ', ('word') x 400);

my $t = KimiTest->new(workers => 1, delay_ms => 20,
    engine_args => [ '--max-num-seqs', 1, '--max-model-len', 131072 ],
    replies => [ { match => 'long story', text => $long } ],
    default => { text => 'plain answer' },
    http_conf => 'kimi_responses_store resp:4m; kimi_offload_threshold 1k;');
$t->start;

my $bg = sub { $t->post('/v1/responses', { model => 'kimi-test',
    background => $true, @_ })->{json}{id} };

sub settle {
    my ($id) = @_;
    my $r;
    KimiTest::wait_for(20, sub {
        $r = $t->get("/v1/responses/$id");
        ($r->{json}{status} // '') !~ /^(queued|in_progress)$/;
    });
    return $r->{json};
}

sub status { $t->get("/v1/responses/$_[0]")->{json}{status} // '' }

sub worker_gone {
    my ($pid) = @_;
    return KimiTest::wait_for(15, sub { !kill 0, $pid });
}

# --- waiting for the engine's one sequence across a reload -------------------

my @w = $t->nginx_workers;
my $a = $bg->(input => 'long story a', max_output_tokens => 50);
ok(KimiTest::wait_for(5, sub { status($a) eq 'in_progress' }),
    'a long one takes the engine');
sleep 0.2;
my $b = $bg->(input => 'long story b', max_output_tokens => 20);
sleep 0.2;
like(status($b), qr/^(queued|in_progress)$/, 'another waits behind it');
$t->reload;
my $ra = settle($a);
my $rb = settle($b);
is($ra->{status}, 'incomplete', 'the first finishes across the reload');
is($rb->{status}, 'incomplete', 'so does the one that waited')
    or diag(explain($rb));
is($rb->{usage}{output_tokens}, 20, 'with every token');
ok(worker_gone($w[0]), 'the old worker exits');

# --- tokenizing on the thread pool across a reload ---------------------------

# some 600k of input (120000 tokens, within the context): its tokenizing
# takes long enough to be still running when the old worker is told to quit
my $big = join(' ', ('word') x 120000);
@w = $t->nginx_workers;
my $c = $bg->(input => $big, max_output_tokens => 5);
$t->reload;
my $rc = settle($c);
is($rc->{status}, 'completed', 'one being tokenized at a reload finishes')
    or diag(explain($rc));
ok(worker_gone($w[0]), 'the old worker exits');
$t->wait_health(10);

# --- the same at nginx -s quit ------------------------------------------------

$a = $bg->(input => 'long story c', max_output_tokens => 30);
ok(KimiTest::wait_for(5, sub { status($a) eq 'in_progress' }),
    'a long one takes the engine before the quit');
$b = $bg->(input => 'long story d', max_output_tokens => 10);
ok(quit(), 'nginx -s quit completes');
my $log = $t->read_file('error.log');
like($log, qr/response ended, 30 tokens.*\Q$a\E/,
    'the running one finishes before the worker exits');
like($log, qr/response ended, 10 tokens.*\Q$b\E/,
    'so does the one that waited for the engine');

# the worker waits for one whose input is tokenized
$t->start_nginx;
$t->wait_health(10);
$c = $bg->(input => $big, max_output_tokens => 5);
ok(quit(), 'nginx -s quit while one is tokenized completes');
$log = $t->read_file('error.log');
like($log, qr/response ended, 3 tokens.*\Q$c\E/,
    'it finishes before the worker exits');
unlike($log, qr/stopped: the worker exits/, 'none is stopped');

sub quit {
    my $master = delete $t->{pids}{nginx};
    my $t0 = time;
    kill 'QUIT', $master;
    while (time - $t0 < 15) {
        return 1 if waitpid($master, WNOHANG) == $master;
        sleep 0.05;
    }
    kill 'TERM', $master;
    waitpid $master, 0;
    return 0;
}

$t->stop;

# --- worker_shutdown_timeout cuts one being tokenized ------------------------

$t = KimiTest->new(workers => 1, delay_ms => 20,
    engine_args => [ '--max-num-seqs', 1, '--max-model-len', 131072 ],
    main_conf => 'worker_shutdown_timeout 10ms;',
    default => { text => 'plain answer' },
    http_conf => 'kimi_responses_store resp:4m; kimi_offload_threshold 1k;');
$t->start;

@w = $t->nginx_workers;
$c = $bg->(input => $big, max_output_tokens => 5);
$t->reload;
$rc = settle($c);
is($rc->{status}, 'failed', 'worker_shutdown_timeout: one being tokenized '
    . 'at a reload is cut') or diag(explain($rc));
# the cut marks it with worker_shutdown_timeout; on a loaded machine the
# cut can land while its body is still parsed on the thread pool, before
# it has a Response to write, and it then reads as its worker gone
like($rc->{error}{message} // '',
    qr/shut down \(worker_shutdown_timeout\)|worker running this response exited/,
    'saying why');
ok(worker_gone($w[0]), 'the old worker exits');

$t->stop;

done_testing();
