#!/usr/bin/perl

# GET /metrics (conf/kimi-keys.conf): vLLM's names, labels and buckets;
# gauges read from the engine's rank record; counters and histograms that
# agree with the usage the responses reported; a well-formed exposition;
# and the $kimi_* log variables agreeing with the same responses.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use KimiTest qw(chat_body completion_body);
use KimiConf;

my $t = KimiTest->new(
    delay_ms => 15,
    replies => [ { match => 'tell a long story',
                   text => join(' ', ('once upon a time') x 100) } ],
    default => { text => 'the quick brown fox jumps over the lazy dog' });

my $c = KimiConf->new($t, 'conf/kimi-keys.conf',
                      keys => "ops sk-ops-0123456789\n"
                            . "other sk-other-0123456789 1000/1h\n"
                            . "third sk-third-0123456789 2000/1h\n");
$c->start;

my %auth = (Authorization => 'Bearer sk-ops-0123456789');
my $label = 'model_name="kimi-test",engine="0"';

sub metrics { $t->get('/metrics')->{body} }

sub sample {
    my ($m, $name, $labels) = @_;
    my ($v) = $m =~ /^\Q$name\E\{\Q$labels\E\} (\S+)$/m;
    return $v;
}

# --- before any request: engine gauges only ------------------------------------

my $m = metrics();
is(sample($m, 'vllm:num_requests_running', $label), '0.000000',
    'running gauge reads the idle engine rank');
is(sample($m, 'vllm:num_requests_waiting', $label), '0.000000',
    'waiting gauge reads the idle engine rank');
ok(defined sample($m, 'vllm:kv_cache_usage_perc', $label),
    'KV cache usage gauge is there');
is(sample($m, 'kimi:engine_ready', $label), '1.000000',
    'the engine rank is ready');
unlike($m, qr/vllm:request_success_total/, 'no request series before requests');

# --- a running stream shows in the gauge ----------------------------------------

my $sock = $t->connect_gw;
print $sock KimiTest::request_text('POST', '/v1/chat/completions',
    chat_body(content => 'tell a long story', stream => \1, max_tokens => 40),
    %auth);
ok(KimiTest::wait_for(10, sub {
    (sample(metrics(), 'vllm:num_requests_running', $label) // 0) >= 1 }),
    'a stream in flight counts as running');
my $raw = '';
while (sysread($sock, my $buf, 65536)) { $raw .= $buf }
close $sock;
my $streamed = KimiTest::parse_response($raw);
is($streamed->{status}, 200, 'the stream completed');

# --- a mix of requests with known usage --------------------------------------------

my @usage;
my %reasons = (stop => 0, length => 0);

for my $i (1 .. 3) {
    my $r = $t->post('/v1/chat/completions', chat_body(content => "q$i"),
        %auth);
    is($r->{status}, 200, "chat request $i succeeds");
    push @usage, $r->{json}{usage};
    $reasons{$r->{json}{choices}[0]{finish_reason}}++;
}

my $r = $t->post('/v1/chat/completions',
    chat_body(content => 'tell a long story', max_tokens => 5), %auth);
is($r->{json}{choices}[0]{finish_reason}, 'length', 'max_tokens ends with length');
push @usage, $r->{json}{usage};
$reasons{length}++;

$r = $t->post('/v1/completions', completion_body(max_tokens => 6), %auth);
is($r->{status}, 200, 'a completions request succeeds');
push @usage, $r->{json}{usage};
$reasons{$r->{json}{choices}[0]{finish_reason}}++;

# the stream above: 40 tokens of a longer story
$reasons{length}++;
my $n_requests = 6;

my $s = $t->sse('/v1/chat/completions',
    chat_body(content => 'tell a long story', stream => \1, max_tokens => 200),
    abort_after => 3, headers => \%auth);
ok($s->{closed_at}, 'a client aborts a stream');

ok(KimiTest::wait_for(10, sub {
    (sample(metrics(), 'vllm:request_success_total',
            "$label,finished_reason=\"abort\"") // 0) == 1 }),
    'the aborted stream counts as finished_reason="abort"');

# a response can end at the client before nginx accounts for it
ok(KimiTest::wait_for(5, sub {
    my $sum = 0;
    $sum += $_ for metrics() =~
        /^vllm:request_success_total\{\Q$label\E,finished_reason="[a-z]+"\} (\d+)$/mg;
    $sum == $n_requests + 1 }), 'every request is accounted for');

$m = metrics();

is(sample($m, 'vllm:request_success_total', "$label,finished_reason=\"stop\""),
    $reasons{stop}, "finished_reason=stop counts $reasons{stop}");
is(sample($m, 'vllm:request_success_total',
    "$label,finished_reason=\"length\""), $reasons{length},
    "finished_reason=length counts $reasons{length}");
is(sample($m, 'vllm:request_success_total', "$label,finished_reason=\"error\""),
    0, 'no errors');

my $prompt = 0;
$prompt += $_->{prompt_tokens} for @usage;
my $gen = 0;
$gen += $_->{completion_tokens} for @usage;

# the first stream's and the aborted one's usage is not in @usage: bound it
my $prompt_total = sample($m, 'vllm:prompt_tokens_total', $label);
my $gen_total = sample($m, 'vllm:generation_tokens_total', $label);
ok($prompt_total > $prompt, "prompt_tokens_total $prompt_total includes the "
    . "$prompt prompt tokens the responses reported");
ok($gen_total >= $gen + 40 + 1, "generation_tokens_total $gen_total includes "
    . "the $gen reported, the stream's 40 and the aborted one's first");

# --- histograms ---------------------------------------------------------------------

my $total = $n_requests + 1;    # + the aborted stream

for my $h (qw(vllm:time_to_first_token_seconds vllm:e2e_request_latency_seconds
              vllm:request_queue_time_seconds vllm:request_decode_time_seconds))
{
    is(sample($m, "${h}_count", $label), $total, "$h counts every request");
    my @b = $m =~ /^\Q$h\E_bucket\{\Q$label\E,le="[^"]+"\} (\d+)$/mg;
    my @sorted = sort { $a <=> $b } @b;
    is_deeply(\@b, \@sorted, "$h buckets are cumulative");
    is($b[-1], $total, "$h +Inf bucket equals the count");
}

my @ttft_le = $m =~ /^vllm:time_to_first_token_seconds_bucket\{\Q$label\E,le="([^"]+)"\}/mg;
is(join(',', @ttft_le), '0.001,0.005,0.01,0.02,0.04,0.06,0.08,0.1,0.25,0.5,'
    . '0.75,1.0,2.5,5.0,7.5,10.0,20.0,40.0,80.0,160.0,640.0,2560.0,+Inf',
    "TTFT buckets are vLLM's");

my @itl_le = $m =~ /^vllm:inter_token_latency_seconds_bucket\{\Q$label\E,le="([^"]+)"\}/mg;
is(join(',', @itl_le), '0.01,0.025,0.05,0.075,0.1,0.15,0.2,0.3,0.4,0.5,0.75,'
    . '1.0,2.5,5.0,7.5,10.0,20.0,40.0,80.0,+Inf', "ITL buckets are vLLM's");

my @e2e_le = $m =~ /^vllm:e2e_request_latency_seconds_bucket\{\Q$label\E,le="([^"]+)"\}/mg;
is(join(',', @e2e_le), '0.3,0.5,0.8,1.0,1.5,2.0,2.5,5.0,10.0,15.0,20.0,30.0,'
    . '40.0,50.0,60.0,120.0,240.0,480.0,960.0,1920.0,7680.0,+Inf',
    "request latency buckets are vLLM's");

my $itl_count = sample($m, 'vllm:inter_token_latency_seconds_count', $label);
ok($itl_count > 0 && $itl_count <= $gen_total - $total,
    "one inter-token gap per token after each first ($itl_count)");
my $itl_sum = sample($m, 'vllm:inter_token_latency_seconds_sum', $label);
ok($itl_sum / $itl_count >= 0.010 && $itl_sum / $itl_count < 1,
    sprintf('mean inter-token gap %.1f ms matches the engine\'s 15 ms steps',
            1000 * $itl_sum / $itl_count));

my $ttft_sum = sample($m, 'vllm:time_to_first_token_seconds_sum', $label);
my $e2e_sum = sample($m, 'vllm:e2e_request_latency_seconds_sum', $label);
ok($ttft_sum > 0 && $ttft_sum < $e2e_sum, 'TTFT sum is below e2e sum');

# --- the exposition is well formed ----------------------------------------------------

# two budgeted keys, so two budget series per family
for my $k (qw(other third)) {
    $t->post('/v1/chat/completions', chat_body(max_tokens => 2),
        Authorization => "Bearer sk-$k-0123456789");
}
$m = metrics();
like($m, qr/^kimi:token_budget_limit_tokens\{zone="kimi_budgets",key_id="third"\} 2000$/m,
    'budget limits are exported by key id');

# Prometheus text: a family's TYPE comes first and its samples follow as
# one group; a family never reappears after another one started
my (%typed, %done, $current, $bad);
for my $line (split /\n/, $m) {
    if ($line =~ /^# TYPE (\S+) (counter|gauge|histogram)$/) {
        $bad .= "TYPE twice: $line\n" if $typed{$1}++;
        $done{$current} = 1 if defined $current;
        $current = $1;
        next;
    }
    next if $line =~ /^# HELP \S+ .+$/;
    if ($line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-z_]+="(?:[^"\\]|\\.)*",?)*\})? -?[0-9.e+]+$/) {
        my $fam = $1;
        $fam =~ s/_(bucket|count|sum)$// unless $typed{$fam};
        $bad .= "untyped: $line\n" unless $typed{$fam};
        $bad .= "out of its group: $line\n"
            if $done{$fam} || !defined $current || $fam ne $current;
        next;
    }
    $bad .= "unparsable: $line\n";
}
ok(!$bad, 'every line is a HELP, a TYPE or a sample in its family\'s group')
    or diag($bad);

like($t->get('/metrics')->{headers}{'content-type'},
    qr{^text/plain; version=0\.0\.4}, 'Prometheus text content type');

is($t->post('/metrics', {})->{status}, 405, 'POST /metrics is not allowed');

# --- log variables agree with the responses -----------------------------------------

my $id = $r->{json}{id};
ok(KimiTest::wait_for(5, sub { $t->read_file('kimi-billing.log') =~ /id=\Q$id\E / }),
    'the completions request is in the billing log by its response id');
my ($line) = grep { /id=\Q$id\E / } split /\n/, $t->read_file('kimi-billing.log');
like($line, qr/ key=ops /, 'log names the key id');
like($line, qr/ model=kimi-test /, 'log names the served model');
like($line, qr/ rank=0 /, 'log names the engine rank');
like($line, qr/ prompt=$usage[-1]{prompt_tokens} /,
    '$kimi_prompt_tokens equals usage.prompt_tokens');
like($line, qr/ completion=$usage[-1]{completion_tokens} /,
    '$kimi_completion_tokens equals usage.completion_tokens');
like($line, qr/ finish=$r->{json}{choices}[0]{finish_reason} /,
    '$kimi_finish_reason equals the response finish_reason');
like($line, qr/ ttft_ms=\d+\.\d{3} /, '$kimi_ttft is ms with 3 decimals');
like($line, qr/ tpot_ms=\d+\.\d{3} /, '$kimi_tpot is ms with 3 decimals');
my ($tpot) = $line =~ / tpot_ms=([\d.]+) /;
ok($tpot >= 10 && $tpot < 1000, "tpot $tpot ms follows the 15 ms engine steps");
like($line, qr/ queue_ms=\d+\.\d{3} /, '$kimi_queue_time is there');

ok((grep { /key=- model=- id=- rank=- status=200 prompt=- completion=- / }
    split /\n/, $t->read_file('kimi-billing.log')),
    'requests that never reached the engine (/health, /metrics) log no counts');

# --- n choices: every choice's tokens count, the request once ------------------

my $gen0 = sample(metrics(), 'vllm:generation_tokens_total', $label);
my $req0 = sample(metrics(), 'vllm:request_success_total',
    $label . ',finished_reason="stop"') // 0;
my $rn = $t->post('/v1/chat/completions', chat_body(n => 3), %auth);
is($rn->{status}, 200, 'n = 3 served');
my $n3 = $rn->{json}{usage}{completion_tokens};
is($n3, 3 * 10, 'usage: three choices of 10 tokens each');
is(sample(metrics(), 'vllm:generation_tokens_total', $label), $gen0 + $n3,
    'generation_tokens_total grows by every choice\'s tokens');
is(sample(metrics(), 'vllm:request_success_total',
          $label . ',finished_reason="stop"'), $req0 + 1,
    'and the request counts once');

# --- counters survive a reload ------------------------------------------------------

my $before = sample(metrics(), 'vllm:generation_tokens_total', $label);
$t->reload;
sleep 1;    # the new workers take the same zone
is(sample(metrics(), 'vllm:generation_tokens_total', $label), $before,
    'counters survive nginx -s reload');

$t->stop;

done_testing();
