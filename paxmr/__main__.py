from paxmr.cli import main

main()
