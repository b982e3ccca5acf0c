#!/usr/bin/perl

# Metrics and log variables with two engine ranks (--data-parallel-size 2):
# gauges come per rank from each rank's record, request series carry the
# rank that served them in the `engine` label, and $kimi_engine_rank logs
# it.  Requests are pinned with X-Kimi-Rank so the counts are known.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use KimiTest qw(chat_body);
use KimiConf;

my $t = KimiTest->new(delay_ms => 2, default => { text => 'one two three' },
    engine_args => [ '--data-parallel-size', '2' ]);
my $c = KimiConf->new($t, 'conf/kimi-keys.conf',
                      keys => "alice sk-alice-0123456789\n");
$c->start;

my %auth = (Authorization => 'Bearer sk-alice-0123456789');
my %want = (0 => 2, 1 => 3);

for my $rank (sort keys %want) {
    for (1 .. $want{$rank}) {
        my $r = $t->post('/v1/chat/completions', chat_body(max_tokens => 3),
            %auth, 'X-Kimi-Rank' => $rank);
        is($r->{status}, 200, "a request pinned to rank $rank is served");
    }
}

sub served {
    my ($m, $rank) = @_;
    my $n = 0;
    $n += $_ for $m =~ /^vllm:request_success_total\{model_name="kimi-test",engine="$rank",finished_reason="[a-z]+"\} (\d+)$/mg;
    return $n;
}

my $m;
ok(KimiTest::wait_for(5, sub {
    $m = $t->get('/metrics')->{body};
    served($m, 0) == $want{0} && served($m, 1) == $want{1} }),
    'request_success_total counts each rank\'s requests under its engine label')
    or diag($m);

for my $rank (0, 1) {
    like($m, qr/^vllm:num_requests_running\{model_name="kimi-test",engine="$rank"\} /m,
        "rank $rank has its running gauge");
    like($m, qr/^kimi:engine_ready\{model_name="kimi-test",engine="$rank"\} 1\.000000$/m,
        "rank $rank is ready");
    like($m, qr/^vllm:time_to_first_token_seconds_count\{model_name="kimi-test",engine="$rank"\} $want{$rank}$/m,
        "rank $rank has its own TTFT histogram");
}

sub logged {
    my ($rank) = @_;
    return scalar grep { / key=alice .* rank=$rank status=200 / }
        split /\n/, $t->read_file('kimi-billing.log');
}
ok(KimiTest::wait_for(5, sub { logged(1) == $want{1} }),
    '$kimi_engine_rank logs rank 1 for the requests it served');
is(logged(0), $want{0}, 'and rank 0 for its own');

$t->stop;

done_testing();
