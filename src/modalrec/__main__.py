from modalrec.cli import main

main()
