#!/bin/bash
# kill a CLI run once its training has ended (its log shows the GSM8K evaluation)
LOG=$1
for i in $(seq 1 400); do
  if grep -aq "gsm8k:" $LOG 2>/dev/null; then pkill -f "output-dir ${LOG%.log} "; exit 0; fi
  sleep 3
done
