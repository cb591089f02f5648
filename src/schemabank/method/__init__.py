"""The method: a routed bank of low-rank schemas on a frozen causal LM, and how it is trained.

Read in this order: :mod:`.bank` (one bank: router, schemas, regularisers), :mod:`.router`
(what a router reads), :mod:`.attach` (banks on a Hugging Face model's decoder layers),
:mod:`.adapter` (PEFT LoRA plus the banks), :mod:`.stages` (the three stages as data) and
:mod:`.tags` (the problem tags and the routing targets of stage 1). Everything else in the
package trains, evaluates and reports on it; :mod:`schemabank.study` is the study around it.
"""
