#!/bin/bash
# usage: pair.sh ROOT NAME: two CLI runs in a row with one fresh cache, each stopped after training
ROOT=$1; N=$2; rm -rf /tmp/cli/ic_$N
for i in 1 2; do
  (/tmp/cli/watch.sh /tmp/cli/$N$i.log &)
  /tmp/cli/run.sh $ROOT /tmp/cli/ic_$N /tmp/cli/$N$i
done
echo done > /tmp/cli/$N.done
