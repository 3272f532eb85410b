//! Backdoor defences, one file per defence. Each reports CA, ASR and RA before and after, and
//! the defence effectiveness rate, in the table the attacks use.
