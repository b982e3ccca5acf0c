#!/usr/bin/perl

# Counters stay exact under concurrency: many requests at once over two
# nginx workers add into the shared metrics zone and into one key's budget
# without a lost update (atomic adds into per-worker shards; the budget
# under its zone mutex once per arrival and once per end).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Select;
use Test::More;
use Time::HiRes qw(time);
use KimiTest qw(chat_body);
use KimiConf;

my $n = 40;

my $t = KimiTest->new(delay_ms => 2,
    default => { text => 'a few words of answer for everyone here' });
my $c = KimiConf->new($t, 'conf/kimi-keys.conf',
                      keys => "alice sk-alice-0123456789 100000000/3650d\n");
$c->start;

my $label = 'model_name="kimi-test",engine="0"';

# all requests written before any response is read
sub concurrent {
    my (@reqs) = @_;
    my (%raw, %idx);
    my $sel = IO::Select->new;
    for my $i (0 .. $#reqs) {
        my $s = $t->connect_gw;
        print $s $reqs[$i];
        $sel->add($s);
        $idx{fileno $s} = $i;
        $raw{$i} = '';
    }
    my $end = time + 60;
    while ($sel->count && time < $end) {
        for my $s ($sel->can_read(1)) {
            my $got = sysread($s, my $buf, 65536);
            if ($got) { $raw{$idx{fileno $s}} .= $buf; next; }
            $sel->remove($s);
            close $s;
        }
    }
    return map { KimiTest::parse_response($raw{$_}) } 0 .. $#reqs;
}

my @r = concurrent(map {
    KimiTest::request_text('POST', '/v1/chat/completions',
        chat_body(content => "question $_", max_tokens => 3 + $_ % 5),
        Authorization => 'Bearer sk-alice-0123456789')
} 1 .. $n);

is(scalar(grep { $_->{status} == 200 } @r), $n, "$n concurrent requests succeed");

my ($prompt, $gen) = (0, 0);
for (@r) {
    $prompt += $_->{json}{usage}{prompt_tokens} // 0;
    $gen += $_->{json}{usage}{completion_tokens} // 0;
}

# a response can end at the client before nginx accounts for it
ok(KimiTest::wait_for(5, sub {
    my $done = 0;
    $done += $_ for $t->get('/metrics')->{body} =~
        /^vllm:request_success_total\{\Q$label\E,finished_reason="[a-z]+"\} (\d+)$/mg;
    $done == $n }), 'every request is accounted for');

my $m = $t->get('/metrics')->{body};
my ($p) = $m =~ /^vllm:prompt_tokens_total\{\Q$label\E\} (\d+)$/m;
my ($g) = $m =~ /^vllm:generation_tokens_total\{\Q$label\E\} (\d+)$/m;
my ($ttft) = $m =~ /^vllm:time_to_first_token_seconds_count\{\Q$label\E\} (\d+)$/m;
my $done = 0;
$done += $_ for $m =~ /^vllm:request_success_total\{\Q$label\E,finished_reason="[a-z]+"\} (\d+)$/mg;

is($done, $n, "request_success_total counts exactly $n");
is($p, $prompt, "prompt_tokens_total is exactly the $prompt reported");
is($g, $gen, "generation_tokens_total is exactly the $gen reported");
is($ttft, $n, 'one TTFT observation per request');

my ($left) = $m =~ /^kimi:token_budget_remaining_tokens\{zone="kimi_budgets",key_id="alice"\} (\d+)$/m;
# 10^8 tokens per 10 years refill 0.3 tokens per second: at most a few here
my $spent = 100000000 - $left;
ok($spent >= $prompt + $gen - 5 && $spent <= $prompt + $gen,
    "the budget was debited $spent for " . ($prompt + $gen) . ' used');

my @workers = $t->nginx_workers;
is(scalar @workers, 2, 'nginx runs two workers that share the zone');

# 40 clients without a key, at once: every refusal is counted
@r = concurrent(map {
    KimiTest::request_text('GET', '/v1/models') } 1 .. $n);
is(scalar(grep { $_->{status} == 401 } @r), $n, "$n keyless requests get 401");
like($t->get('/metrics')->{body},
    qr/^kimi:api_key_rejections_total\{reason="missing"\} $n$/m,
    "and all $n refusals are counted");

$t->stop;

done_testing();
